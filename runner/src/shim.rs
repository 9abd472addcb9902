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

use std::ffi::OsString;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use nix::fcntl::OFlag;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid};
use serde::{Deserialize, Serialize};

use crate::logs::{LogWriter, Stream};

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

/// [`run`] with either kind of [`Start`].
pub fn run_start(dir: &Path, start: Start<'_>) -> Result<ExitRecord, ShimError> {
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
    let (child, pid, pipes) = match start {
        Start::Command(command) => {
            let (program, args) = command.split_first().ok_or_else(|| ShimError::Spawn {
                command: String::new(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "empty command"),
            })?;
            let mut child = Command::new(program)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
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
            let spawn_err = |source: io::Error| ShimError::Spawn {
                command: "the built-in runtime".into(),
                source,
            };
            let (out_r, out_w) =
                nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| spawn_err(e.into()))?;
            let (err_r, err_w) =
                nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| spawn_err(e.into()))?;
            let null = std::fs::File::open("/dev/null").map_err(spawn_err)?;
            // SAFETY: the shim is single-threaded here (see `Start::Forked`),
            // so the child's copy of the process is consistent.
            match unsafe { nix::unistd::fork() }.map_err(|e| spawn_err(e.into()))? {
                ForkResult::Child => {
                    let ok = nix::unistd::dup2_stdin(&null).is_ok()
                        && nix::unistd::dup2_stdout(&out_w).is_ok()
                        && nix::unistd::dup2_stderr(&err_w).is_ok();
                    drop((out_r, err_r, out_w, err_w, null));
                    let code = if ok { f() } else { 125 };
                    std::process::exit(code);
                }
                ForkResult::Parent { child } => {
                    drop((out_w, err_w, null));
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
    // One thread per stream: the container may fill either pipe first.
    let pumps: Vec<_> = pipes
        .into_iter()
        .map(|(mut pipe, stream)| {
            let writer = Arc::clone(&writer);
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match pipe.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
                            if let Err(e) = w.push(stream, &buf[..n]) {
                                tracing::warn!(error = %e, "cannot write container log");
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(_) => break,
                    }
                }
            })
        })
        .collect();
    let record = match child {
        Child::Process(mut child) => exit_record(child.wait().map_err(io_err(dir))?),
        Child::Forked(pid) => loop {
            match waitpid(pid, None) {
                Ok(WaitStatus::Exited(_, code)) => break record_of(code, None),
                Ok(WaitStatus::Signaled(_, sig, _)) => {
                    break record_of(128 + sig as i32, Some(sig as i32));
                }
                Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(io_err(dir)(e.into())),
            }
        },
    };
    for p in pumps {
        let _ = p.join();
    }
    if let Err(e) = writer.lock().unwrap_or_else(|p| p.into_inner()).flush_all() {
        tracing::warn!(error = %e, "cannot flush container log");
    }
    let json = serde_json::to_vec(&record).unwrap_or_default();
    write_atomic(&dir.join(EXIT_FILE), &json).map_err(io_err(dir))?;
    Ok(record)
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
