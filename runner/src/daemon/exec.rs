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
//! `-i` is served on an upgraded connection ([`serve_upgraded`]: raw stdin
//! up, frames down, stdin closed at the client's half-close); `-t` is
//! refused for now: a pty (runc's console socket, the built-in runtime's
//! terminal) plugs in at `launch` when run/attach get one. Calls `containers` (the target), `bundle`,
//! `exec_main` (the failure log); called by `http`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use oci_spec::runtime::{Process, UserBuilder};
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, watch};

use super::containers::{Containers, ExecTarget};
use super::error::{Error, Result};
use crate::api::{ExecCreateRequest, ExecCreateResponse, FrameKind, WaitResponse, encode_frame};

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
    status: watch::Sender<Status>,
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
        if req.tty {
            return Err(Error::BadRequest(
                "exec with -t is not supported yet".into(),
            ));
        }
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
            + req.user.as_ref().map_or(0, String::len);
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
            status: watch::channel(Status::default()).0,
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
            "DetachKeys": "",
            "Pid": st.pid,
        }))
    }

    /// `POST /exec/{id}/start`: runs the command. Detached: returns once it
    /// runs (or with docker's error and exit code when it cannot). Attached:
    /// a frame stream of its output ending with its exit code.
    pub async fn start(&self, id: &str, detach: bool) -> Result<Option<mpsc::Receiver<Bytes>>> {
        Ok(self.start_with(id, detach, false).await?.0)
    }

    /// [`Execs::start`] attached, with the process's stdin piped: for an
    /// upgraded connection (see [`serve_upgraded`]).
    pub async fn start_with_stdin(
        &self,
        id: &str,
    ) -> Result<(mpsc::Receiver<Bytes>, tokio::process::ChildStdin)> {
        match self.start_with(id, false, true).await? {
            (Some(output), Some(stdin)) => Ok((output, stdin)),
            _ => Err(Error::Internal("the exec's stdin was not piped".into())),
        }
    }

    async fn start_with(&self, id: &str, detach: bool, stdin: bool) -> Result<Started> {
        let instance = self.get(id)?;
        if stdin && !instance.request.attach_stdin {
            return Err(Error::BadRequest(format!(
                "exec {id} was not created with stdin (-i)"
            )));
        }
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
        let dir = target.dir.join("exec").join(&instance.id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::Internal(format!("exec dir {}: {e}", dir.display())))?;
        let cleanup = {
            let dir = dir.clone();
            move || {
                let _ = std::fs::remove_dir_all(&dir);
            }
        };
        let process = match process_spec(&target, &instance.request) {
            Ok(p) => p,
            Err(e) => {
                cleanup();
                return Err(e);
            }
        };
        let files = ExecFiles::new(&dir);
        let written = serde_json::to_vec(&process)
            .map_err(Error::internal)
            .and_then(|b| {
                std::fs::write(&files.process, b)
                    .map_err(|e| Error::Internal(format!("writing the exec process: {e}")))
            });
        if let Err(e) = written {
            cleanup();
            return Err(e);
        }
        let mut cmd = tokio::process::Command::new(match &target.runtime {
            Some(runtime) => runtime.as_path(),
            None => self.exe.as_path(),
        });
        cmd.args(runtime_args(&target, &files));
        cmd.stdin(if stdin {
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
        tracing::info!(container = %target.id, exec = %instance.id, "exec started");
        let child_stdin = child.stdin.take();
        let (tx, rx) = mpsc::channel::<Bytes>(64);
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
        tokio::spawn(async move {
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
                    _ = tokio::time::sleep(Duration::from_millis(5)), if !status.borrow().running => {
                        if let Some(pid) = read_pid(&files.pid) {
                            status.send_modify(|s| { s.running = true; s.pid = pid; });
                            let _ = verdict_tx.send(Some(true));
                        }
                    }
                }
            };
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
            return Ok((Some(rx), child_stdin));
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

/// What a start hands back: the output frames (attached) and the
/// process's stdin (when piped).
type Started = (
    Option<mpsc::Receiver<Bytes>>,
    Option<tokio::process::ChildStdin>,
);

/// Serves an attached exec with stdin over an upgraded connection (`exec
/// -i`): what the client sends is copied to the process's stdin (its
/// half-close closes the stdin), and the output frames, ending with the
/// exit frame, are written back. docker's hijacked exec start, without a
/// terminal.
pub fn serve_upgraded(
    on_upgrade: hyper::upgrade::OnUpgrade,
    mut output: mpsc::Receiver<Bytes>,
    mut stdin: tokio::process::ChildStdin,
) {
    use tokio::io::AsyncWriteExt;
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(error = %e, "exec: the connection upgrade failed");
                return;
            }
        };
        let (mut from_client, mut to_client) =
            tokio::io::split(hyper_util::rt::TokioIo::new(upgraded));
        let input = tokio::spawn(async move {
            let _ = tokio::io::copy(&mut from_client, &mut stdin).await;
            let _ = stdin.shutdown().await;
        });
        let mut open = true;
        while let Some(frame) = output.recv().await {
            // Keep receiving after the client left so the exec is reaped
            // and its files removed.
            if open && to_client.write_all(&frame).await.is_err() {
                open = false;
            }
        }
        let _ = to_client.shutdown().await;
        input.abort();
    });
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

/// The runtime's command line: runc's `exec`, or the built-in runtime's.
fn runtime_args(target: &ExecTarget, files: &ExecFiles) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    match &target.runtime {
        Some(_) => {
            args.push("--root".into());
            args.push(target.dir.join(crate::internal::EXTERNAL_STATE_DIR).into());
            args.push("--log".into());
            args.push(files.log.clone().into());
            args.push("--log-format".into());
            args.push("json".into());
            args.push("exec".into());
            args.push("--process".into());
            args.push(files.process.clone().into());
            args.push("--pid-file".into());
            args.push(files.pid.clone().into());
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
        }
    }
    args.push(target.id.clone().into());
    args
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
    process.set_terminal(Some(false));
    process.set_console_size(None);
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
