//! The hidden `wharf-runner runtime exec` subcommand (the built-in
//! runtime's counterpart of `runc exec --process FILE ID`) and the failure
//! log both runtimes write for an exec that could not start.
//!
//! `runtime exec --bundle DIR --process FILE --pid PID [--pid-file FILE]
//! [--log FILE] ID` runs the process spec FILE inside the container whose
//! PID 1 is the host pid PID, placed in the cgroup named by the bundle's
//! `linux.cgroupsPath` and filtered by its seccomp profile, and exits with
//! the process's exit code. When the process could not be started it exits
//! 127 (not found), 126 (not executable) or 125 and writes one JSON line
//! `{"level":"error","msg":"exec failed: ..."}` to `--log`, the shape
//! `runc --log-format json` writes, so the daemon reads one format for
//! both runtimes ([`read_failure`]).
//!
//! Called by `internal::runtime_main` (before any thread exists: it forks)
//! and by the daemon's `exec` (`read_failure`); calls `runtime::exec`,
//! `cgroups`, `bundle`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::unistd::Pid;

use crate::cgroups;
use crate::runtime::HookError;

const USAGE: &str = "usage: wharf-runner runtime exec --bundle DIR --process FILE --pid PID [--pid-file FILE] [--log FILE] [--console-socket PATH] ID";

/// The parsed command line of `runtime exec`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecArgs {
    pub bundle: PathBuf,
    pub process: PathBuf,
    pub pid: i32,
    pub pid_file: Option<PathBuf>,
    pub log: Option<PathBuf>,
    /// runc's `--console-socket`: where the pty master of a
    /// `process.terminal` exec is sent.
    pub console_socket: Option<PathBuf>,
    pub id: String,
}

/// Parses `runtime exec`'s arguments (`--flag value` or `--flag=value`).
pub fn parse_args(args: &[String]) -> Result<ExecArgs, String> {
    let mut bundle = None;
    let mut process = None;
    let mut pid = None;
    let mut pid_file = None;
    let mut log = None;
    let mut console_socket = None;
    let mut id = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        let slot = match name {
            "--bundle" => &mut bundle,
            "--process" => &mut process,
            "--pid" => &mut pid,
            "--pid-file" => &mut pid_file,
            "--log" => &mut log,
            "--console-socket" => &mut console_socket,
            _ if !arg.starts_with('-') && id.is_none() => {
                id = Some(arg.clone());
                continue;
            }
            _ => return Err(format!("unexpected argument {arg:?}")),
        };
        let value = match inline {
            Some(v) => v,
            None => it
                .next()
                .cloned()
                .ok_or_else(|| format!("{name} needs a value"))?,
        };
        *slot = Some(value);
    }
    let pid = pid
        .ok_or("--pid is required")?
        .parse::<i32>()
        .ok()
        .filter(|p| *p > 1)
        .ok_or("--pid must be a process id above 1")?;
    Ok(ExecArgs {
        bundle: bundle.ok_or("--bundle is required")?.into(),
        process: process.ok_or("--process is required")?.into(),
        pid,
        pid_file: pid_file.map(PathBuf::from),
        log: log.map(PathBuf::from),
        console_socket: console_socket.map(PathBuf::from),
        id: id.ok_or("the container id is required")?,
    })
}

/// `wharf-runner runtime exec ...`: see the module docs.
pub fn runtime_exec_main(args: &[String]) -> i32 {
    let args = match parse_args(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("wharf-runner runtime exec: {e}\n{USAGE}");
            return 125;
        }
    };
    let fail = |msg: String, code: i32| -> i32 {
        match &args.log {
            Some(log) => {
                let line = serde_json::json!({"level": "error", "msg": msg}).to_string() + "\n";
                if let Err(e) = std::fs::write(log, line) {
                    eprintln!(
                        "wharf-runner runtime exec: {msg} (log {}: {e})",
                        log.display()
                    );
                }
            }
            None => eprintln!("wharf-runner runtime exec: {msg}"),
        }
        code
    };
    let spec = match crate::bundle::load_bundle(&args.bundle) {
        Ok(s) => s,
        Err(e) => return fail(format!("exec failed: {e}"), 125),
    };
    let process = match crate::runtime::exec::load_process(&args.process) {
        Ok(p) => p,
        Err(e) => return fail(format!("exec failed: {e}"), 125),
    };
    let cgroup = match crate::internal::cgroup_of(&args.bundle) {
        Ok(c) => c,
        Err(e) => return fail(format!("exec failed: {e}"), 125),
    };
    // runc's protocol: connect now; the process sends its pty master.
    let console = match &args.console_socket {
        Some(path) => match std::os::unix::net::UnixStream::connect(path) {
            Ok(s) => Some(std::os::fd::OwnedFd::from(s)),
            Err(e) => {
                return fail(
                    format!("exec failed: console socket {}: {e}", path.display()),
                    125,
                );
            }
        },
        None => None,
    };
    let mut before_start = |pid: Pid| -> Result<(), HookError> {
        if let Some((parent, name, _)) = &cgroup {
            let hierarchy = cgroups::detect(Path::new(cgroups::CGROUP_ROOT))?;
            let manager =
                cgroups::Manager::open(Arc::new(cgroups::HostFs), &hierarchy, parent, name)?;
            if manager.dirs().is_empty() {
                return Err(format!("the cgroup /{parent}/{name} does not exist").into());
            }
            manager.add_process(pid)?;
        }
        Ok(())
    };
    let mut started = |pid: Pid| {
        if let Some(path) = &args.pid_file
            && let Err(e) = crate::shim::write_atomic(path, pid.as_raw().to_string().as_bytes())
        {
            eprintln!("wharf-runner: pid file {}: {e}", path.display());
        }
    };
    match crate::runtime::exec::exec(
        &spec,
        process,
        &args.id,
        Pid::from_raw(args.pid),
        console,
        &mut before_start,
        &mut started,
    ) {
        Ok(status) => status.code(),
        Err(e) => {
            let code = e.exit_code();
            fail(crate::runtime::exec::failure_message(&e), code)
        }
    }
}

/// `wharf-runner runtime reap --pid-file FILE -- COMMAND...`: runs an
/// external runtime's detached exec (`runc exec --detach --console-socket`,
/// the only way runc hands out the pty master of an exec) as a child
/// subreaper, so the exec'd process, orphaned when runc returns, becomes
/// ours: exits with the runtime's code when that is not 0, else waits for
/// the process named in FILE (reaping whatever else arrives) and exits with
/// its code, or 128 + the signal that killed it.
pub fn reap_main(args: &[String]) -> i32 {
    const REAP_USAGE: &str = "usage: wharf-runner runtime reap --pid-file FILE -- COMMAND...";
    let (pid_file, command) = match args {
        [flag, file, dashes, command @ ..]
            if flag == "--pid-file" && dashes == "--" && !command.is_empty() =>
        {
            (PathBuf::from(file), command)
        }
        _ => {
            eprintln!("{REAP_USAGE}");
            return 125;
        }
    };
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        eprintln!("wharf-runner runtime reap: subreaper: {e}");
        return 125;
    }
    let status = match std::process::Command::new(&command[0])
        .args(&command[1..])
        .status()
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("wharf-runner runtime reap: {}: {e}", command[0]);
            return 125;
        }
    };
    if !status.success() {
        use std::os::unix::process::ExitStatusExt;
        return status
            .code()
            .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    }
    let pid = match std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|t| t.trim().parse::<i32>().ok())
    {
        Some(p) if p > 0 => Pid::from_raw(p),
        _ => {
            eprintln!(
                "wharf-runner runtime reap: no pid in {}",
                pid_file.display()
            );
            return 125;
        }
    };
    use nix::sys::wait::{WaitStatus, waitpid};
    loop {
        match waitpid(None::<Pid>, None) {
            Ok(WaitStatus::Exited(p, code)) if p == pid => return code,
            Ok(WaitStatus::Signaled(p, sig, _)) if p == pid => return 128 + sig as i32,
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                eprintln!("wharf-runner runtime reap: waiting for pid {pid}: {e}");
                return 125;
            }
        }
    }
}

/// The last error a runtime logged for an exec (`runc --log-format json`
/// lines, or the built-in runtime's one line): its `msg`. Reads at most
/// 64 KiB from the end.
pub fn read_failure(log: &Path) -> Option<String> {
    let mut file = std::fs::File::open(log).ok()?;
    let len = file.metadata().ok()?.len();
    const MAX: u64 = 64 * 1024;
    if len > MAX {
        use std::io::Seek;
        file.seek(std::io::SeekFrom::Start(len - MAX)).ok()?;
    }
    let mut text = String::new();
    file.take(MAX).read_to_string(&mut text).ok()?;
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| matches!(v["level"].as_str(), Some("error" | "fatal")))
        .and_then(|v| v["msg"].as_str().map(str::to_string))
}

/// docker's exit code for an exec that could not start, from the runtime's
/// message: 127 when the command does not exist, 126 otherwise.
pub fn failure_exit_code(message: &str) -> i32 {
    if message.contains("executable file not found")
        || message.contains("no such file or directory")
        || message.contains("not a directory")
    {
        127
    } else {
        126
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn exec_arguments_parse_in_both_forms() {
        let a = parse_args(&strings(&[
            "--bundle",
            "/b",
            "--process=/p.json",
            "--pid",
            "42",
            "--log",
            "/l",
            "abc",
        ]))
        .unwrap();
        assert_eq!(a.bundle, PathBuf::from("/b"));
        assert_eq!(a.process, PathBuf::from("/p.json"));
        assert_eq!((a.pid, a.id.as_str()), (42, "abc"));
        assert_eq!(a.log, Some(PathBuf::from("/l")));
        assert_eq!(a.pid_file, None);
        assert_eq!(a.console_socket, None);
        let a = parse_args(&strings(&[
            "--bundle",
            "/b",
            "--process",
            "/p",
            "--pid",
            "7",
            "--console-socket",
            "console.sock",
            "abc",
        ]))
        .unwrap();
        assert_eq!(a.console_socket, Some(PathBuf::from("console.sock")));
        for bad in [
            &["--bundle", "/b", "--process", "/p", "abc"][..],
            &["--bundle", "/b", "--process", "/p", "--pid", "1", "abc"],
            &["--bundle", "/b", "--process", "/p", "--pid", "x", "abc"],
            &["--bundle", "/b", "--process", "/p", "--pid", "5"],
            &["--bundle", "/b", "--process", "/p", "--pid", "5", "a", "b"],
            &["--bundle"],
        ] {
            assert!(parse_args(&strings(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_last_logged_error_is_the_failure() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log.json");
        assert_eq!(read_failure(&log), None);
        std::fs::write(
            &log,
            "{\"level\":\"warning\",\"msg\":\"w\"}\nnot json\n{\"level\":\"error\",\"msg\":\"exec failed: x\",\"time\":\"t\"}\n",
        )
        .unwrap();
        assert_eq!(read_failure(&log).as_deref(), Some("exec failed: x"));
        assert_eq!(
            failure_exit_code("exec: \"nope\": executable file not found in $PATH"),
            127
        );
        assert_eq!(failure_exit_code("exec: \"/etc\": permission denied"), 126);
    }
}
