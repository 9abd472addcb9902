//! `exec`: more processes in a running container, docker's two steps
//! (create an exec instance, then start it attached or detached).
//!
//! Start builds the process spec from the container's bundle (`config.json`
//! written at its start): its env plus the exec's `-e`, its cwd or `-w`, its
//! user or `-u` resolved through the container's `/etc/passwd`, its
//! capabilities (only the bounding set for a non-root user, as at `run`),
//! rlimits and no_new_privs; it is written to
//! `<container>/exec/<exec-id>/process.json`. Then it runs the container's
//! runtime: `wharf-runner runtime exec` (see `exec_main`) or `runc exec
//! --process` with runc's state dir of the container. Both write a pid file
//! once the command was executed and, when it could not be, one JSON error
//! line to a log file, which becomes docker's `OCI runtime exec failed:
//! ...: unknown` and exit code 127 or 126.
//!
//! The runtime process is a child of the daemon (docker's containerd-shim
//! holds exec processes; here they end when the daemon does) with stdout and
//! stderr piped into the frame stream of an attached start (discarded for
//! `-d`). Exec instances live in memory only, as docker's do.
//!
//! `-i` and `-t` are served on an upgraded connection by attach's
//! `proxy` (raw input up, frames down, the exit frame last; `-i` alone:
//! stdin is a pipe closed at the client's half-close; `-it`: the detach
//! keys). With `-t` the process spec asks for a terminal and the runtime
//! gets runc's `--console-socket` (`console.sock` in the exec's directory,
//! bound by the daemon): the process makes its pty in the container's
//! devpts and the master comes back over the socket; the daemon reads it
//! (all stdout), writes the client's input to it and sets its size
//! (`POST /exec/{id}/resize`). runc sends an exec's master only with
//! `--detach`, so it runs under `wharf-runner runtime reap`, a subreaper
//! that waits for the orphaned process and exits with its code. Calls
//! `containers` (the target), `bundle`, `attach` (the proxy's types),
//! `exec_main` (the failure log), `stdio`; called by `http`.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use oci_spec::runtime::{Process, UserBuilder};
use serde_json::json;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

use super::containers::{Containers, ExecTarget};
use super::error::{Error, Result};
use crate::api::{ExecCreateRequest, ExecCreateResponse, FrameKind, WaitResponse, encode_frame};
use crate::stdio::Msg;

/// At most this many exec instances are kept; finished ones go first.
const MAX_EXECS: usize = 1024;
/// A command line or environment of an exec is at most this long in total.
const MAX_REQUEST_BYTES: usize = 256 * 1024;
/// How long the output of a finished exec is still read (a background
/// child may hold the pipes open for ever).
const DRAIN_AFTER_EXIT: Duration = Duration::from_secs(2);
/// How long start waits for the runtime to report the command executed.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Where an exec is in its life.
#[derive(Debug, Clone, Default, PartialEq)]
struct Status {
    started: bool,
    running: bool,
    /// The host pid of the exec'd process, once known.
    pid: i64,
    /// Set once it ended (or failed to start).
    exit_code: Option<i64>,
    /// Why it could not start (docker's message).
    error: Option<String>,
}

struct Instance {
    id: String,
    container_id: String,
    request: ExecCreateRequest,
    /// The parsed detach keys (`-it`; empty otherwise).
    detach_keys: Vec<u8>,
    status: watch::Sender<Status>,
    /// `-t`: the pty master once the runtime sent it (until the exec
    /// ended), and the last size asked for.
    pty: Mutex<Pty>,
}

#[derive(Default)]
struct Pty {
    master: Option<Arc<AsyncFd<OwnedFd>>>,
    size: Option<(u16, u16)>,
}

/// An attached exec stream for attach's `proxy`: its output frames, where
/// the client's input goes (`-i`), the detach keys, and whether the
/// client's end of input closes the process's stdin (`-i` without `-t`).
pub struct ExecStream {
    pub output: mpsc::Receiver<Bytes>,
    pub input: Option<mpsc::Sender<Msg>>,
    pub detach_keys: Vec<u8>,
    pub close_stdin: bool,
}

/// The daemon's exec instances.
pub struct Execs {
    containers: Arc<Containers>,
    exe: PathBuf,
    map: Mutex<HashMap<String, Arc<Instance>>>,
}

fn new_id() -> Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| Error::Internal(format!("reading /dev/urandom: {e}")))?;
    Ok(hex::encode(bytes))
}

/// docker's `ReplaceOrAppendEnvValues`: `KEY=VALUE` replaces `KEY` or is
/// appended; a bare `KEY` removes it.
pub fn merge_env(base: &[String], overrides: &[String]) -> Vec<String> {
    let mut out: Vec<Option<String>> = base.iter().cloned().map(Some).collect();
    let key = |e: &str| e.split_once('=').map_or(e, |(k, _)| k).to_string();
    for value in overrides {
        let k = key(value);
        let existing = out
            .iter()
            .position(|e| e.as_deref().is_some_and(|e| key(e) == k));
        match (value.contains('='), existing) {
            (true, Some(i)) => out[i] = Some(value.clone()),
            (true, None) => out.push(Some(value.clone())),
            (false, Some(i)) => out[i] = None,
            (false, None) => {}
        }
    }
    out.into_iter().flatten().collect()
}

fn not_running(id: &str) -> Error {
    Error::Conflict(format!("container {id} is not running"))
}

impl Execs {
    pub fn new(containers: Arc<Containers>, exe: PathBuf) -> Arc<Execs> {
        Arc::new(Execs {
            containers,
            exe,
            map: Mutex::new(HashMap::new()),
        })
    }

    fn get(&self, id: &str) -> Result<Arc<Instance>> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("No such exec instance: {id}")))
    }

    /// The exec ids of a container (for its inspect's `ExecIDs`).
    pub fn ids_of(&self, container_id: &str) -> Vec<String> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let mut ids: Vec<String> = map
            .values()
            .filter(|i| i.container_id == container_id && i.status.borrow().exit_code.is_none())
            .map(|i| i.id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// `POST /containers/{id}/exec`.
    pub async fn create(
        &self,
        container: &str,
        req: ExecCreateRequest,
    ) -> Result<ExecCreateResponse> {
        let detach_keys = match (&req.detach_keys, req.tty && req.attach_stdin) {
            (_, false) => Vec::new(),
            (Some(k), true) => crate::stdio::parse_detach_keys(k).map_err(Error::BadRequest)?,
            (None, true) => crate::stdio::parse_detach_keys(crate::stdio::DEFAULT_DETACH_KEYS)
                .map_err(Error::BadRequest)?,
        };
        if req.cmd.first().is_none_or(|c| c.is_empty()) {
            return Err(Error::BadRequest("No exec command specified".into()));
        }
        let size: usize = req
            .cmd
            .iter()
            .chain(&req.env)
            .map(|s| s.len() + 1)
            .sum::<usize>()
            + req.workdir.as_ref().map_or(0, String::len)
            + req.user.as_ref().map_or(0, String::len)
            + req.detach_keys.as_ref().map_or(0, String::len);
        if size > MAX_REQUEST_BYTES {
            return Err(Error::BadRequest("the exec request is too large".into()));
        }
        let all = req
            .cmd
            .iter()
            .chain(&req.env)
            .chain(&req.workdir)
            .chain(&req.user);
        if all.clone().any(|s| s.contains('\0')) {
            return Err(Error::BadRequest(
                "the exec request contains a NUL byte".into(),
            ));
        }
        if let Some(w) = req.workdir.as_deref().filter(|w| !w.is_empty())
            && !w.starts_with('/')
        {
            return Err(Error::BadRequest(format!(
                "the working directory '{w}' is invalid, it needs to be an absolute path"
            )));
        }
        let target = self.containers.exec_target(container).await?;
        if !target.running {
            return Err(not_running(&target.id));
        }
        let id = new_id()?;
        let instance = Arc::new(Instance {
            id: id.clone(),
            container_id: target.id,
            request: req,
            detach_keys,
            status: watch::channel(Status::default()).0,
            pty: Mutex::new(Pty::default()),
        });
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_EXECS {
            map.retain(|_, i| i.status.borrow().exit_code.is_none());
            if map.len() >= MAX_EXECS {
                return Err(Error::Conflict(format!(
                    "too many exec instances (at most {MAX_EXECS})"
                )));
            }
        }
        map.insert(id.clone(), instance);
        Ok(ExecCreateResponse { id })
    }

    /// `GET /exec/{id}/json`: docker's keys.
    pub fn inspect(&self, id: &str) -> Result<serde_json::Value> {
        let i = self.get(id)?;
        let st = i.status.borrow().clone();
        let entrypoint = i.request.cmd.first().cloned().unwrap_or_default();
        let arguments = i.request.cmd.get(1..).unwrap_or_default();
        Ok(json!({
            "ID": i.id,
            "Running": st.running,
            "ExitCode": st.exit_code,
            "ProcessConfig": {
                "tty": i.request.tty,
                "entrypoint": entrypoint,
                "arguments": arguments,
                "privileged": false,
                "user": i.request.user.clone().unwrap_or_default(),
            },
            "OpenStdin": i.request.attach_stdin,
            "OpenStderr": true,
            "OpenStdout": true,
            "CanRemove": false,
            "ContainerID": i.container_id,
            "DetachKeys": i.request.detach_keys.clone().unwrap_or_default(),
            "Pid": st.pid,
        }))
    }

    /// `POST /exec/{id}/start`: runs the command. Detached: returns once it
    /// runs (or with docker's error and exit code when it cannot). Attached:
    /// a frame stream of its output ending with its exit code.
    pub async fn start(&self, id: &str, detach: bool) -> Result<Option<mpsc::Receiver<Bytes>>> {
        Ok(self.start_with(id, detach, false).await?.0)
    }

    /// [`Execs::start`] attached on an upgraded connection (`-i`, `-t`):
    /// the stream for attach's `proxy`.
    pub async fn start_attached(&self, id: &str) -> Result<ExecStream> {
        let instance = self.get(id)?;
        let stdin = instance.request.attach_stdin;
        match self.start_with(id, false, stdin).await? {
            (Some(output), input) => Ok(ExecStream {
                output,
                input,
                detach_keys: instance.detach_keys.clone(),
                close_stdin: !instance.request.tty,
            }),
            _ => Err(Error::Internal("the exec's output was not piped".into())),
        }
    }

    /// `POST /exec/{id}/resize`: the size of an exec's terminal (applied
    /// when its pty arrives if it has not yet).
    pub fn resize(&self, id: &str, rows: u16, cols: u16) -> Result<()> {
        let instance = self.get(id)?;
        if !instance.request.tty {
            return Err(Error::Conflict(format!(
                "exec {id} has no terminal (it was not created with -t)"
            )));
        }
        let mut pty = instance.pty.lock().unwrap_or_else(|p| p.into_inner());
        pty.size = Some((rows, cols));
        if let Some(master) = &pty.master {
            crate::stdio::set_winsize(master.as_raw_fd(), rows, cols)
                .map_err(|e| Error::Conflict(format!("cannot resize the exec's terminal: {e}")))?;
        }
        Ok(())
    }

    async fn start_with(&self, id: &str, detach: bool, stdin: bool) -> Result<Started> {
        let instance = self.get(id)?;
        let mut first = false;
        instance.status.send_if_modified(|s| {
            first = !s.started;
            s.started = true;
            first
        });
        if !first {
            return Err(Error::Conflict(format!(
                "Error: Exec command {id} has already run"
            )));
        }
        let result = self.launch(&instance, detach, stdin).await;
        if let Err(e) = &result {
            instance.status.send_modify(|s| {
                s.exit_code.get_or_insert(126);
                s.error = Some(e.to_string());
            });
        }
        result
    }

    async fn launch(&self, instance: &Arc<Instance>, detach: bool, stdin: bool) -> Result<Started> {
        let target = self.containers.exec_target(&instance.container_id).await?;
        if !target.running {
            return Err(not_running(&target.id));
        }
        let tty = instance.request.tty;
        let dir = target.dir.join("exec").join(&instance.id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::Internal(format!("exec dir {}: {e}", dir.display())))?;
        let cleanup = {
            let dir = dir.clone();
            move || {
                let _ = std::fs::remove_dir_all(&dir);
            }
        };
        let prepared = (|| -> Result<(ExecFiles, Option<tokio::net::UnixListener>)> {
            let process = process_spec(&target, &instance.request)?;
            let files = ExecFiles::new(&dir);
            let bytes = serde_json::to_vec(&process).map_err(Error::internal)?;
            std::fs::write(&files.process, bytes)
                .map_err(|e| Error::Internal(format!("writing the exec process: {e}")))?;
            // Where the runtime sends the pty master (`-t`).
            let console = if tty {
                let listener = crate::stdio::bind_in(&dir, crate::stdio::CONSOLE_SOCKET)
                    .and_then(|l| {
                        l.set_nonblocking(true)?;
                        tokio::net::UnixListener::from_std(l)
                    })
                    .map_err(|e| Error::Internal(format!("the exec's console socket: {e}")))?;
                Some(listener)
            } else {
                None
            };
            Ok((files, console))
        })();
        let (files, console) = match prepared {
            Ok(p) => p,
            Err(e) => {
                cleanup();
                return Err(e);
            }
        };
        let (program, args) = runtime_command(&self.exe, &target, &files, tty);
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args).current_dir(&dir);
        let piped_stdin = stdin && !tty;
        cmd.stdin(if piped_stdin {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .kill_on_drop(false);
        let piped = || {
            if detach {
                std::process::Stdio::null()
            } else {
                std::process::Stdio::piped()
            }
        };
        cmd.stdout(piped()).stderr(piped());
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                cleanup();
                return Err(Error::Internal(format!("starting the exec runtime: {e}")));
            }
        };
        tracing::info!(container = %target.id, exec = %instance.id, tty, "exec started");
        let (tx, rx) = mpsc::channel::<Bytes>(64);
        // The pty master, to the input task once it came.
        let (master_tx, master_rx) = watch::channel::<Option<Arc<AsyncFd<OwnedFd>>>>(None);
        let input = if stdin {
            let (in_tx, in_rx) = mpsc::channel::<Msg>(16);
            match child.stdin.take() {
                Some(pipe) => {
                    tokio::spawn(feed_pipe(in_rx, pipe));
                }
                None => {
                    tokio::spawn(feed_pty(in_rx, master_rx));
                }
            }
            Some(in_tx)
        } else {
            None
        };
        // Whether the command ran (the pid file appeared), once known. Until
        // then stderr is held back: an external runtime that cannot start
        // the command prints its error there too, and docker's one line
        // (from the runtime's log) replaces it.
        let (verdict_tx, verdict_rx) = watch::channel::<Option<bool>>(None);
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(tokio::spawn(copy_output(
                out,
                FrameKind::Stdout,
                tx.clone(),
                None,
            )));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(tokio::spawn(copy_output(
                err,
                FrameKind::Stderr,
                tx.clone(),
                Some(verdict_rx),
            )));
        }
        let status = instance.status.clone();
        let exec_id = instance.id.clone();
        let this = Arc::clone(instance);
        tokio::spawn(async move {
            // One future for the whole wait: the master must not be lost
            // to a select that moves on mid-receive.
            let has_console = console.is_some();
            let receiving = receive_master(console);
            tokio::pin!(receiving);
            let mut got_master = false;
            // Takes the master in: the size, the reader, the input task.
            let take_master = |fd: std::io::Result<OwnedFd>, readers: &mut Vec<_>| match fd
                .and_then(async_master)
            {
                Ok(master) => {
                    {
                        let mut pty = this.pty.lock().unwrap_or_else(|p| p.into_inner());
                        if let Some((rows, cols)) = pty.size {
                            let _ = crate::stdio::set_winsize(master.as_raw_fd(), rows, cols);
                        }
                        pty.master = Some(Arc::clone(&master));
                    }
                    readers.push(tokio::spawn(copy_pty(Arc::clone(&master), tx.clone())));
                    let _ = master_tx.send(Some(master));
                }
                Err(e) => tracing::warn!(exec = %this.id, error = %e, "receiving the exec's pty"),
            };
            let code = loop {
                tokio::select! {
                    waited = child.wait() => break match waited {
                        Ok(s) => {
                            use std::os::unix::process::ExitStatusExt;
                            s.code().map_or_else(|| 128 + i64::from(s.signal().unwrap_or(0)), i64::from)
                        }
                        Err(e) => {
                            tracing::warn!(exec = %exec_id, error = %e, "waiting for the exec runtime");
                            126
                        }
                    },
                    fd = &mut receiving, if has_console && !got_master => {
                        got_master = true;
                        take_master(fd, &mut readers);
                    }
                    _ = tokio::time::sleep(Duration::from_millis(5)), if !status.borrow().running => {
                        if let Some(pid) = read_pid(&files.pid) {
                            status.send_modify(|s| { s.running = true; s.pid = pid; });
                            let _ = verdict_tx.send(Some(true));
                        }
                    }
                }
            };
            // A master sent just before the runtime ended is still queued.
            if has_console
                && !got_master
                && let Ok(fd) =
                    tokio::time::timeout(Duration::from_millis(200), &mut receiving).await
            {
                take_master(fd, &mut readers);
            }
            let ran = files.pid.exists();
            let _ = verdict_tx.send(Some(ran));
            let (code, error) = match (ran, crate::exec_main::read_failure(&files.log)) {
                (false, Some(msg)) => {
                    let code = i64::from(crate::exec_main::failure_exit_code(&msg));
                    (
                        code,
                        Some(format!("OCI runtime exec failed: {msg}: unknown")),
                    )
                }
                (false, None) if code != 0 => (
                    code,
                    Some(format!(
                        "OCI runtime exec failed: the runtime exited with code {code}: unknown"
                    )),
                ),
                _ => (code, None),
            };
            for r in readers {
                let abort = r.abort_handle();
                if tokio::time::timeout(DRAIN_AFTER_EXIT, r).await.is_err() {
                    abort.abort();
                }
            }
            this.pty.lock().unwrap_or_else(|p| p.into_inner()).master = None;
            drop(master_tx);
            if let Some(message) = &error {
                let _ = tx
                    .send(Bytes::from(encode_frame(
                        FrameKind::Stderr,
                        format!("{message}\n").as_bytes(),
                    )))
                    .await;
            }
            let body = serde_json::to_vec(&WaitResponse { status_code: code }).unwrap_or_default();
            let _ = tx
                .send(Bytes::from(encode_frame(FrameKind::Exit, &body)))
                .await;
            tracing::info!(exec = %exec_id, exit_code = code, "exec ended");
            status.send_modify(|s| {
                s.running = false;
                s.exit_code = Some(code);
                s.error = error;
            });
            cleanup();
        });
        if !detach {
            return Ok((Some(rx), input));
        }
        drop(rx);
        // Detached: answer once the command runs or could not be run.
        let mut watch = instance.status.subscribe();
        let ready = tokio::time::timeout(
            START_TIMEOUT,
            watch.wait_for(|s| s.running || s.exit_code.is_some()),
        )
        .await;
        let st = match ready {
            Ok(Ok(st)) => st.clone(),
            _ => {
                return Err(Error::Internal(format!(
                    "exec {} did not start within {} s",
                    instance.id,
                    START_TIMEOUT.as_secs()
                )));
            }
        };
        match (st.running, st.error) {
            (false, Some(message)) => Err(Error::StartFailed {
                message,
                exit_code: st.exit_code.unwrap_or(126),
            }),
            _ => Ok((None, None)),
        }
    }
}

/// What a start hands back: the output frames (attached) and where the
/// client's input goes (`-i`).
type Started = (Option<mpsc::Receiver<Bytes>>, Option<mpsc::Sender<Msg>>);

/// Accepts the runtime's connection on the console socket and receives
/// the pty master from it. Never resolves without a listener.
async fn receive_master(listener: Option<tokio::net::UnixListener>) -> std::io::Result<OwnedFd> {
    let Some(listener) = listener else {
        return std::future::pending().await;
    };
    let (stream, _) = listener.accept().await?;
    let stream = stream.into_std()?;
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    tokio::task::spawn_blocking(move || crate::stdio::recv_fd(&stream).map(|(fd, _)| fd))
        .await
        .map_err(std::io::Error::other)?
}

/// The master made non-blocking and registered with the reactor.
fn async_master(fd: OwnedFd) -> std::io::Result<Arc<AsyncFd<OwnedFd>>> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(&fd, FcntlArg::F_GETFL)?);
    fcntl(&fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    // SAFETY: the OwnedFd is valid, owned by the AsyncFd from here on and
    // never replaced or closed while registered.
    let registered = unsafe { AsyncFd::register(fd) }.map_err(std::io::Error::from)?;
    Ok(Arc::new(registered))
}

async fn read_master(master: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        let mut guard = master.readable().await?;
        if let Ok(result) = guard.try_io(|fd| Ok(nix::unistd::read(fd.get_ref(), buf)?)) {
            return result;
        }
    }
}

async fn write_master(master: &AsyncFd<OwnedFd>, mut bytes: &[u8]) -> std::io::Result<()> {
    while !bytes.is_empty() {
        let mut guard = master.writable().await?;
        if let Ok(result) = guard.try_io(|fd| Ok(nix::unistd::write(fd.get_ref(), bytes)?)) {
            bytes = &bytes[result?..];
        }
    }
    Ok(())
}

/// Copies the pty's output into stdout frames until every slave closed
/// (the master then reads EIO). Keeps draining after the client left.
async fn copy_pty(master: Arc<AsyncFd<OwnedFd>>, tx: mpsc::Sender<Bytes>) {
    let mut buf = vec![0u8; 32 * 1024];
    let mut open = true;
    loop {
        let n = match read_master(&master, &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if open
            && tx
                .send(Bytes::from(encode_frame(FrameKind::Stdout, &buf[..n])))
                .await
                .is_err()
        {
            open = false;
        }
    }
}

/// `-i` without a terminal: the client's input into the stdin pipe,
/// closed at its end.
async fn feed_pipe(mut input: mpsc::Receiver<Msg>, mut pipe: tokio::process::ChildStdin) {
    while let Some(msg) = input.recv().await {
        match msg {
            Msg::Stdin(bytes) => {
                if pipe.write_all(&bytes).await.is_err() {
                    break;
                }
            }
            Msg::CloseStdin => break,
            Msg::Resize { .. } => {}
        }
    }
    let _ = pipe.shutdown().await;
}

/// `-it`: the client's input into the pty (once the master came; its end
/// is only the end of the client: ^D is a byte for the terminal).
async fn feed_pty(
    mut input: mpsc::Receiver<Msg>,
    mut master: watch::Receiver<Option<Arc<AsyncFd<OwnedFd>>>>,
) {
    while let Some(msg) = input.recv().await {
        let Msg::Stdin(bytes) = msg else { continue };
        let Ok(m) = master.wait_for(Option::is_some).await.map(|m| m.clone()) else {
            break;
        };
        let Some(m) = m else { break };
        if write_master(&m, &bytes).await.is_err() {
            break;
        }
    }
}

/// Stderr bytes held back at most while it is not known whether the
/// command ran; then reading waits for that.
const MAX_HELD: usize = 1 << 20;

/// Copies one output pipe of the exec into frames. With `verdict`, output
/// is held until the verdict is known and dropped when the command did not
/// run. Keeps draining after the client went away, so the process never
/// blocks on a full pipe.
async fn copy_output(
    mut pipe: impl tokio::io::AsyncRead + Unpin,
    kind: FrameKind,
    tx: mpsc::Sender<Bytes>,
    mut verdict: Option<watch::Receiver<Option<bool>>>,
) {
    let mut buf = vec![0u8; 32 * 1024];
    let mut held: Vec<u8> = Vec::new();
    let mut open = true;
    let send = async |bytes: &[u8], open: &mut bool| {
        if *open
            && tx
                .send(Bytes::from(encode_frame(kind, bytes)))
                .await
                .is_err()
        {
            *open = false;
        }
    };
    loop {
        if held.len() >= MAX_HELD
            && let Some(v) = verdict.as_mut()
        {
            let _ = v.wait_for(Option::is_some).await;
        }
        let n = match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        match verdict.as_ref().map(|v| *v.borrow()) {
            Some(None) => {
                held.extend_from_slice(&buf[..n]);
                continue;
            }
            Some(Some(false)) => continue,
            _ => {}
        }
        if !held.is_empty() {
            send(&held, &mut open).await;
            held = Vec::new();
        }
        send(&buf[..n], &mut open).await;
    }
    if !held.is_empty()
        && let Some(v) = verdict.as_mut()
        && v.wait_for(Option::is_some)
            .await
            .is_ok_and(|r| *r == Some(true))
    {
        send(&held, &mut open).await;
    }
}

/// The files of one exec run, in `<container>/exec/<exec-id>/`.
struct ExecFiles {
    process: PathBuf,
    pid: PathBuf,
    log: PathBuf,
}

impl ExecFiles {
    fn new(dir: &Path) -> ExecFiles {
        ExecFiles {
            process: dir.join("process.json"),
            pid: dir.join("exec.pid"),
            log: dir.join("log.json"),
        }
    }
}

fn read_pid(path: &Path) -> Option<i64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The runtime's command: runc's `exec` (with `-t` detached, under
/// `runtime reap`), or the built-in runtime's. The console socket is
/// relative: the runtime runs in the exec's directory, whose path may be
/// too long for a socket address.
fn runtime_command(
    exe: &Path,
    target: &ExecTarget,
    files: &ExecFiles,
    tty: bool,
) -> (PathBuf, Vec<std::ffi::OsString>) {
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    let program = match &target.runtime {
        Some(runtime) => {
            let program = if tty {
                args.extend(["runtime".into(), "reap".into(), "--pid-file".into()]);
                args.push(files.pid.clone().into());
                args.push("--".into());
                args.push(runtime.clone().into());
                exe.to_path_buf()
            } else {
                runtime.clone()
            };
            args.push("--root".into());
            args.push(target.dir.join(crate::internal::EXTERNAL_STATE_DIR).into());
            args.push("--log".into());
            args.push(files.log.clone().into());
            args.push("--log-format".into());
            args.push("json".into());
            args.push("exec".into());
            if tty {
                args.push("--detach".into());
                args.push("--console-socket".into());
                args.push(crate::stdio::CONSOLE_SOCKET.into());
            }
            args.push("--process".into());
            args.push(files.process.clone().into());
            args.push("--pid-file".into());
            args.push(files.pid.clone().into());
            program
        }
        None => {
            args.push("runtime".into());
            args.push("exec".into());
            args.push("--bundle".into());
            args.push(target.dir.clone().into());
            args.push("--process".into());
            args.push(files.process.clone().into());
            args.push("--pid".into());
            args.push(target.pid.to_string().into());
            args.push("--pid-file".into());
            args.push(files.pid.clone().into());
            args.push("--log".into());
            args.push(files.log.clone().into());
            if tty {
                args.push("--console-socket".into());
                args.push(crate::stdio::CONSOLE_SOCKET.into());
            }
            exe.to_path_buf()
        }
    };
    args.push(target.id.clone().into());
    (program, args)
}

/// The exec's process spec: the container's process with the exec's
/// command, environment, working directory and user.
fn process_spec(target: &ExecTarget, req: &ExecCreateRequest) -> Result<Process> {
    let spec = crate::bundle::load_bundle(&target.dir)
        .map_err(|e| Error::Internal(format!("container {}: {e}", target.id)))?;
    let mut process = spec.process().clone().ok_or_else(|| {
        Error::Internal(format!(
            "container {}: the bundle has no process",
            target.id
        ))
    })?;
    process.set_args(Some(req.cmd.clone()));
    process.set_terminal(Some(req.tty));
    let size = req
        .console_size
        .filter(|[rows, cols]| req.tty && *rows > 0 && *cols > 0)
        .map(|[rows, cols]| {
            oci_spec::runtime::BoxBuilder::default()
                .height(u64::from(rows))
                .width(u64::from(cols))
                .build()
        })
        .transpose()
        .map_err(Error::internal)?;
    process.set_console_size(size);
    let env = process.env().clone().unwrap_or_default();
    process.set_env(Some(merge_env(&env, &req.env)));
    if let Some(w) = req.workdir.as_deref().filter(|w| !w.is_empty()) {
        process.set_cwd(PathBuf::from(w));
    }
    if let Some(user) = req.user.as_deref().filter(|u| !u.is_empty()) {
        let resolved = crate::bundle::resolve_user(&target.dir.join("rootfs"), user)
            .map_err(|e| Error::BadRequest(e.to_string()))?;
        let mut b = UserBuilder::default().uid(resolved.uid).gid(resolved.gid);
        if !resolved.additional_gids.is_empty() {
            b = b.additional_gids(resolved.additional_gids);
        }
        process.set_user(b.build().map_err(Error::internal)?);
        // As at `run`: root gets the container's set, anyone else only
        // the bounding set.
        if let Some(caps) = process.capabilities().clone() {
            let mut caps = caps;
            if resolved.uid != 0 {
                caps.set_effective(None);
                caps.set_permitted(None);
            } else {
                caps.set_effective(caps.bounding().clone());
                caps.set_permitted(caps.bounding().clone());
            }
            process.set_capabilities(Some(caps));
        }
    }
    Ok(process)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn env_overrides_replace_append_and_remove() {
        let base = v(&["PATH=/bin", "HOME=/root", "HOSTNAME=abc"]);
        assert_eq!(
            merge_env(&base, &v(&["HOME=/tmp", "NEW=1", "HOSTNAME", "GONE"])),
            v(&["PATH=/bin", "HOME=/tmp", "NEW=1"])
        );
        assert_eq!(merge_env(&base, &[]), base);
    }
}
