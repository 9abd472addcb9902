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

/// Runs `command` (an OCI runtime invocation such as `runc run --bundle B ID`)
/// with its output logged into `dir`, waits for it and records its end.
pub fn run(dir: &Path, command: &[OsString]) -> Result<ExitRecord, ShimError> {
    let io_err = |path: &Path| {
        let path = path.to_owned();
        move |source| ShimError::Io { path, source }
    };
    let (program, args) = command.split_first().ok_or_else(|| ShimError::Spawn {
        command: String::new(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "empty command"),
    })?;
    write_atomic(
        &dir.join(SHIM_PID_FILE),
        std::process::id().to_string().as_bytes(),
    )
    .map_err(io_err(dir))?;
    let log_path = dir.join(LOG_FILE);
    let writer = Arc::new(Mutex::new(
        LogWriter::create(&log_path).map_err(io_err(&log_path))?,
    ));
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
    write_atomic(
        &dir.join(RUNTIME_PID_FILE),
        child.id().to_string().as_bytes(),
    )
    .map_err(io_err(dir))?;
    // One thread per stream: the container may fill either pipe first.
    let pumps: Vec<_> = [
        (
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            Stream::Stdout,
        ),
        (
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            Stream::Stderr,
        ),
    ]
    .into_iter()
    .filter_map(|(pipe, stream)| pipe.map(|p| (p, stream)))
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
    let status = child.wait().map_err(io_err(dir))?;
    for p in pumps {
        let _ = p.join();
    }
    if let Err(e) = writer.lock().unwrap_or_else(|p| p.into_inner()).flush_all() {
        tracing::warn!(error = %e, "cannot flush container log");
    }
    let record = exit_record(status);
    let json = serde_json::to_vec(&record).unwrap_or_default();
    write_atomic(&dir.join(EXIT_FILE), &json).map_err(io_err(dir))?;
    Ok(record)
}

fn exit_record(status: std::process::ExitStatus) -> ExitRecord {
    use std::os::unix::process::ExitStatusExt;
    let signal = status.signal();
    ExitRecord {
        exit_code: status.code().unwrap_or_else(|| 128 + signal.unwrap_or(0)),
        signal,
        finished_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
    }
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
