//! The per-container monitor ("shim"): one small process per container that
//! starts the OCI runtime for it, holds the container's stdio, writes the
//! logs, reaps it and records how it ended.
//!
//! It is started by the daemon as a separate process (`wharf-runner shim`),
//! so the daemon can restart without killing running containers: on start
//! the daemon re-attaches by reading the files below. Calls `logs`; knows
//! nothing of the daemon, images or cgroups.
//!
//! Files in the container directory, each written whole (temp + rename):
//! - `shim.pid`: the monitor's pid; `runtime.pid`: the runtime process's pid;
//!   `init.pid`: the container's pid (written by the runtime).
//! - `container-log.json`: the logs (see `logs`).
//! - `exit.json`: how the container ended; absent while it runs.
//! - `attach.sock` (containers made with `-i`/`-t`, see `shim_io`): where
//!   clients attach; `console.sock`: where the runtime sends the pty
//!   master (`-t`), removed once received.

use std::ffi::OsString;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio as Stdio_};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};
use serde::{Deserialize, Serialize};

use crate::logs::{LogWriter, Stream};
use crate::{shim_io, stdio};

pub const LOG_FILE: &str = "container-log.json";
pub const EXIT_FILE: &str = "exit.json";
pub const SHIM_PID_FILE: &str = "shim.pid";
pub const RUNTIME_PID_FILE: &str = "runtime.pid";
/// The container's own pid (its PID 1, as the host sees it), written by the
/// runtime once the command was executed.
pub const INIT_PID_FILE: &str = "init.pid";

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("cannot start the runtime {command:?}: {source}")]
    Spawn { command: String, source: io::Error },
    #[error("container directory {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

/// How a container ended, as `inspect` and `wait` report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// The exit code, or 128 + the signal that killed it (as docker reports).
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub finished_at: String,
}

/// Writes a file whole: a reader sees the old content or the new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

pub fn read_exit(dir: &Path) -> Option<ExitRecord> {
    let bytes = std::fs::read(dir.join(EXIT_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// How the shim starts the runtime.
pub enum Start<'a> {
    /// A program: an OCI runtime invocation such as `runc run --bundle B ID`.
    Command(&'a [OsString]),
    /// A function run in a forked child of the shim (the built-in
    /// runtime), returning its exit code: one exec fewer per container
    /// start. The shim must still be single-threaded when it forks, which
    /// it is: its log threads start after.
    Forked(&'a dyn Fn() -> i32),
}

/// Runs `command` (an OCI runtime invocation such as `runc run --bundle B ID`)
/// with its output logged into `dir`, waits for it and records its end.
pub fn run(dir: &Path, command: &[OsString]) -> Result<ExitRecord, ShimError> {
    run_start(dir, Start::Command(command))
}

/// The child the runtime runs in, however it was started.
enum Child {
    Process(std::process::Child),
    Forked(Pid),
}

/// How the container's stdio is set up (`-i`, `-t`); the default is
/// neither: stdin is /dev/null and the output goes to the log only.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stdio {
    /// `-t`: the runtime makes a pty (`process.terminal`) and sends its
    /// master to [`crate::stdio::CONSOLE_SOCKET`] in the container dir.
    pub tty: bool,
    /// `-i`: the container's stdin is a pipe the shim holds (with `-t`,
    /// input goes to the pty master).
    pub stdin: bool,
    /// Wait (bounded) for the first attach client before starting the
    /// runtime, so an attached start sees all of the output.
    pub wait_attach: bool,
    /// The runtime returns once the container runs (`runc run --detach`):
    /// the shim becomes a subreaper and waits for the pid in `init.pid`.
    pub detached_runtime: bool,
}

impl Stdio {
    fn interactive(&self) -> bool {
        self.tty || self.stdin
    }
}

/// How long the shim waits for the first attach client, and for the
/// runtime to send the pty master.
const ATTACH_WAIT: Duration = Duration::from_secs(10);
const CONSOLE_WAIT: Duration = Duration::from_secs(60);

/// [`run`] with either kind of [`Start`].
pub fn run_start(dir: &Path, start: Start<'_>) -> Result<ExitRecord, ShimError> {
    run_with_stdio(dir, start, Stdio::default())
}

/// [`run_start`] with the container's stdio set up as `io` says.
pub fn run_with_stdio(dir: &Path, start: Start<'_>, io: Stdio) -> Result<ExitRecord, ShimError> {
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| ShimError::Io { path, source }
    };
    write_atomic(
        &dir.join(SHIM_PID_FILE),
        std::process::id().to_string().as_bytes(),
    )
    .map_err(io_err(dir))?;
    let log_path = dir.join(LOG_FILE);
    let writer = Arc::new(Mutex::new(
        LogWriter::create(&log_path).map_err(io_err(&log_path))?,
    ));
    let attach = if io.interactive() {
        Some(stdio::bind_in(dir, stdio::ATTACH_SOCKET).map_err(io_err(dir))?)
    } else {
        None
    };
    let console = if io.tty {
        Some(stdio::bind_in(dir, stdio::CONSOLE_SOCKET).map_err(io_err(dir))?)
    } else {
        None
    };
    let clients = shim_io::Clients::default();
    let mut first_client = None;
    if io.wait_attach
        && let Some(listener) = &attach
    {
        first_client =
            shim_io::accept_within(listener, ATTACH_WAIT, &mut || false).map_err(io_err(dir))?;
    }
    let spawn_err = |source: io::Error| ShimError::Spawn {
        command: "the runtime".into(),
        source,
    };
    // The container's stdin: a pipe we hold the write end of, or /dev/null.
    let (stdin_read, stdin_write): (OwnedFd, Option<OwnedFd>) = if io.stdin && !io.tty {
        let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| spawn_err(e.into()))?;
        (r, Some(w))
    } else {
        (
            std::fs::File::open("/dev/null").map_err(spawn_err)?.into(),
            None,
        )
    };
    if io.detached_runtime {
        nix::sys::prctl::set_child_subreaper(true).map_err(|e| spawn_err(e.into()))?;
    }
    let (child, pid, pipes) = match start {
        Start::Command(command) => {
            let (program, args) = command.split_first().ok_or_else(|| ShimError::Spawn {
                command: String::new(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "empty command"),
            })?;
            let mut child = Command::new(program)
                .args(args)
                .current_dir(dir)
                .stdin(Stdio_::from(stdin_read))
                .stdout(Stdio_::piped())
                .stderr(Stdio_::piped())
                .spawn()
                .map_err(|source| ShimError::Spawn {
                    command: format!("{command:?}"),
                    source,
                })?;
            let pipes: Vec<(Box<dyn Read + Send>, Stream)> = [
                child
                    .stdout
                    .take()
                    .map(|s| (Box::new(s) as Box<dyn Read + Send>, Stream::Stdout)),
                child
                    .stderr
                    .take()
                    .map(|s| (Box::new(s) as Box<dyn Read + Send>, Stream::Stderr)),
            ]
            .into_iter()
            .flatten()
            .collect();
            let pid = child.id();
            (Child::Process(child), pid, pipes)
        }
        Start::Forked(f) => {
            let (out_r, out_w) =
                nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| spawn_err(e.into()))?;
            let (err_r, err_w) =
                nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| spawn_err(e.into()))?;
            // SAFETY: the shim is single-threaded here (see `Start::Forked`),
            // so the child's copy of the process is consistent.
            match unsafe { nix::unistd::fork() }.map_err(|e| spawn_err(e.into()))? {
                ForkResult::Child => {
                    let ok = nix::unistd::dup2_stdin(&stdin_read).is_ok()
                        && nix::unistd::dup2_stdout(&out_w).is_ok()
                        && nix::unistd::dup2_stderr(&err_w).is_ok()
                        && nix::unistd::chdir(dir).is_ok();
                    drop((out_r, err_r, out_w, err_w, stdin_read, stdin_write));
                    drop((attach, console, first_client));
                    let code = if ok { f() } else { 125 };
                    std::process::exit(code);
                }
                ForkResult::Parent { child } => {
                    drop((out_w, err_w));
                    let pipes: Vec<(Box<dyn Read + Send>, Stream)> = vec![
                        (Box::new(std::fs::File::from(out_r)), Stream::Stdout),
                        (Box::new(std::fs::File::from(err_r)), Stream::Stderr),
                    ];
                    (Child::Forked(child), child.as_raw() as u32, pipes)
                }
            }
        }
    };
    write_atomic(&dir.join(RUNTIME_PID_FILE), pid.to_string().as_bytes()).map_err(io_err(dir))?;
    let mut child = child;
    // The runtime's end, when it came while we waited for the pty.
    let mut early: Option<ExitRecord> = None;
    let mut master: Option<std::fs::File> = None;
    if let Some(listener) = &console {
        let got = shim_io::accept_within(listener, CONSOLE_WAIT, &mut || {
            if early.is_none() {
                early = child.try_wait();
            }
            early.is_some()
        });
        match got {
            Ok(Some(sock)) => match stdio::recv_fd(&sock) {
                Ok((fd, _name)) => master = Some(std::fs::File::from(fd)),
                Err(e) => eprintln!("wharf-runner shim: receiving the pty: {e}"),
            },
            Ok(None) => {
                if early.is_none() {
                    eprintln!("wharf-runner shim: the runtime sent no pty");
                }
            }
            Err(e) => eprintln!("wharf-runner shim: console socket: {e}"),
        }
        let _ = std::fs::remove_file(dir.join(stdio::CONSOLE_SOCKET));
    }
    drop(console);
    let input = Arc::new(shim_io::Input {
        stdin: Mutex::new(stdin_write.map(std::fs::File::from)),
        tty: master.as_ref().and_then(|m| m.try_clone().ok()),
    });
    if let Some(c) = first_client {
        shim_io::serve_client(c, &clients, &input);
    }
    if let Some(listener) = attach {
        shim_io::serve(listener, clients.clone(), Arc::clone(&input));
    }
    let mut pipes = pipes;
    if let Some(m) = master {
        pipes.push((Box::new(m), Stream::Stdout));
    }
    let interactive = io.interactive();
    // One thread per stream: the container may fill either pipe first.
    let pumps: Vec<_> = pipes
        .into_iter()
        .map(|(mut pipe, stream)| {
            let writer = Arc::clone(&writer);
            let clients = clients.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match pipe.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            if interactive {
                                clients.broadcast(stream, &buf[..n]);
                            }
                            let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
                            if let Err(e) = w.push(stream, &buf[..n]) {
                                tracing::warn!(error = %e, "cannot write container log");
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        // A pty master reads EIO once the last slave closed.
                        Err(_) => break,
                    }
                }
            })
        })
        .collect();
    let record = match early {
        Some(r) => r,
        None => child.wait().map_err(io_err(dir))?,
    };
    let record = if io.detached_runtime && record.exit_code == 0 && record.signal.is_none() {
        wait_detached(dir).map_err(io_err(dir))?
    } else {
        record
    };
    for p in pumps {
        let _ = p.join();
    }
    if let Err(e) = writer.lock().unwrap_or_else(|p| p.into_inner()).flush_all() {
        tracing::warn!(error = %e, "cannot flush container log");
    }
    clients.close_all();
    if interactive {
        let _ = std::fs::remove_file(dir.join(stdio::ATTACH_SOCKET));
    }
    let json = serde_json::to_vec(&record).unwrap_or_default();
    write_atomic(&dir.join(EXIT_FILE), &json).map_err(io_err(dir))?;
    Ok(record)
}

impl Child {
    /// The runtime's end if it has come (without blocking).
    fn try_wait(&mut self) -> Option<ExitRecord> {
        match self {
            Child::Process(c) => c.try_wait().ok().flatten().map(exit_record),
            Child::Forked(pid) => match waitpid(*pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(_, code)) => Some(record_of(code, None)),
                Ok(WaitStatus::Signaled(_, sig, _)) => {
                    Some(record_of(128 + sig as i32, Some(sig as i32)))
                }
                _ => None,
            },
        }
    }

    /// Waits for the runtime's end.
    fn wait(&mut self) -> io::Result<ExitRecord> {
        match self {
            Child::Process(c) => Ok(exit_record(c.wait()?)),
            Child::Forked(pid) => loop {
                match waitpid(*pid, None) {
                    Ok(WaitStatus::Exited(_, code)) => return Ok(record_of(code, None)),
                    Ok(WaitStatus::Signaled(_, sig, _)) => {
                        return Ok(record_of(128 + sig as i32, Some(sig as i32)));
                    }
                    Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(e.into()),
                }
            },
        }
    }
}

/// After a detached runtime returned: the container (reparented to us, a
/// subreaper) is the pid in `init.pid`; reap everything until it ends.
fn wait_detached(dir: &Path) -> io::Result<ExitRecord> {
    let text = std::fs::read_to_string(dir.join(INIT_PID_FILE))?;
    let pid: i32 = text
        .trim()
        .parse()
        .map_err(|_| io::Error::other(format!("bad pid file content {text:?}")))?;
    let pid = Pid::from_raw(pid);
    loop {
        match waitpid(None::<Pid>, None) {
            Ok(WaitStatus::Exited(p, code)) if p == pid => return Ok(record_of(code, None)),
            Ok(WaitStatus::Signaled(p, sig, _)) if p == pid => {
                return Ok(record_of(128 + sig as i32, Some(sig as i32)));
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            // No children left without having seen it: it was not ours.
            Err(nix::errno::Errno::ECHILD) => {
                return Err(io::Error::other(format!(
                    "the container (pid {pid}) was not reparented to the shim"
                )));
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn record_of(exit_code: i32, signal: Option<i32>) -> ExitRecord {
    ExitRecord {
        exit_code,
        signal,
        finished_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
    }
}

fn exit_record(status: std::process::ExitStatus) -> ExitRecord {
    use std::os::unix::process::ExitStatusExt;
    let signal = status.signal();
    record_of(
        status.code().unwrap_or_else(|| 128 + signal.unwrap_or(0)),
        signal,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::read_entries;

    fn cmd(parts: &[&str]) -> Vec<OsString> {
        parts.iter().map(OsString::from).collect()
    }

    #[test]
    fn logs_both_streams_and_records_the_exit_code() {
        let dir = tempfile::tempdir().unwrap();
        let rec = run(
            dir.path(),
            &cmd(&["/bin/sh", "-c", "echo out; echo err >&2; exit 3"]),
        )
        .unwrap();
        assert_eq!(rec.exit_code, 3);
        assert_eq!(rec.signal, None);
        assert_eq!(read_exit(dir.path()), Some(rec));
        let logs = read_entries(&dir.path().join(LOG_FILE), None).unwrap();
        let mut got: Vec<_> = logs.iter().map(|e| (e.stream, e.log.clone())).collect();
        got.sort_by_key(|(s, _)| *s == Stream::Stderr);
        assert_eq!(
            got,
            vec![
                (Stream::Stdout, "out\n".to_string()),
                (Stream::Stderr, "err\n".to_string())
            ]
        );
        assert!(dir.path().join(RUNTIME_PID_FILE).exists());
    }

    #[test]
    fn an_interactive_container_takes_stdin_from_an_attach_client() {
        use crate::stdio::{ATTACH_SOCKET, Msg, connect_in};
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let client = std::thread::spawn(move || {
            let mut sock = loop {
                match connect_in(&path, ATTACH_SOCKET) {
                    Ok(s) => break s,
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(5)),
                }
            };
            sock.write_all(&Msg::Stdin(b"hello\n".to_vec()).encode())
                .unwrap();
            sock.write_all(&Msg::CloseStdin.encode()).unwrap();
            let mut got = Vec::new();
            sock.read_to_end(&mut got).unwrap();
            got
        });
        let io = Stdio {
            stdin: true,
            wait_attach: true,
            ..Stdio::default()
        };
        let rec = run_with_stdio(dir.path(), Start::Command(&cmd(&["/bin/cat"])), io).unwrap();
        assert_eq!(rec.exit_code, 0);
        let got = client.join().unwrap();
        let (kind, payload, _) = crate::api::decode_frame(&got).unwrap().unwrap();
        assert_eq!(
            (kind, payload),
            (crate::api::FrameKind::Stdout, &b"hello\n"[..])
        );
        let logged = read_entries(&dir.path().join(LOG_FILE), None).unwrap();
        assert_eq!(logged[0].log, "hello\n");
        assert!(!dir.path().join(ATTACH_SOCKET).exists());
    }

    #[test]
    fn a_killed_process_reports_128_plus_signal() {
        let dir = tempfile::tempdir().unwrap();
        let rec = run(dir.path(), &cmd(&["/bin/sh", "-c", "kill -9 $$"])).unwrap();
        assert_eq!(rec.signal, Some(9));
        assert_eq!(rec.exit_code, 137);
    }

    #[test]
    fn a_missing_runtime_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = run(dir.path(), &cmd(&["/nonexistent/runtime"])).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/runtime"), "{err}");
        assert!(read_exit(dir.path()).is_none());
    }
}
