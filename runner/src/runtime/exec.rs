//! `exec` for the built-in runtime: runs one more process inside a running
//! container, like `runc exec --process process.json ID`.
//!
//! The new process ends up where the container's PID 1 is: in each of its
//! namespaces (joined with `setns` on `/proc/<pid>/ns/*`; the pid namespace
//! only takes effect for children, so the runtime forks after joining it),
//! in its cgroup (the caller's `before_start` hook places the child, as for
//! `run`, before the child enters the cgroup namespace), with the rlimits,
//! user, capabilities, no_new_privs and seccomp filter of the process spec
//! and the container's `linux.seccomp`. The runtime process itself stays in
//! the host's namespaces and cgroup, forwards signals to the child, reaps it
//! and returns how it ended.
//!
//! Called by `internal` (the `runtime exec` subcommand), in a
//! single-threaded process; calls `init` (the shared privilege drop and
//! exec), `seccomp`, nix.

use std::fs;
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::fcntl::OFlag;
use nix::sched::{CloneFlags, setns};
use nix::sys::prctl;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::wait::waitpid;
use nix::unistd::{ForkResult, Pid, pipe2};
use oci_spec::runtime::{Process, Spec};

use super::init::{self, Failure};
use super::{Error, ExitStatus, FORWARDED, HookError, MaskGuard, read_failure, seccomp, sys};

/// The namespaces an exec joins, in the order it joins them (the mount
/// namespace last: the paths of the others are opened before anyway).
const NAMESPACES: &[(&str, CloneFlags)] = &[
    ("cgroup", CloneFlags::CLONE_NEWCGROUP),
    ("ipc", CloneFlags::CLONE_NEWIPC),
    ("uts", CloneFlags::CLONE_NEWUTS),
    ("net", CloneFlags::CLONE_NEWNET),
    ("mnt", CloneFlags::CLONE_NEWNS),
];

/// A process spec file is at most this long.
const MAX_PROCESS_JSON: u64 = 1 << 20;

/// Reads `process.json` (a runtime-spec `process` object, as runc's
/// `exec --process` takes).
pub fn load_process(path: &Path) -> Result<Process, Error> {
    use std::io::Read;
    let invalid = |reason: String| Error::InvalidSpec {
        path: path.to_path_buf(),
        reason,
    };
    let file = fs::File::open(path).map_err(|e| invalid(e.to_string()))?;
    let mut bytes = Vec::new();
    file.take(MAX_PROCESS_JSON + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| invalid(e.to_string()))?;
    if bytes.len() as u64 > MAX_PROCESS_JSON {
        return Err(invalid("too large".into()));
    }
    let process: Process = serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(invalid("process.args is empty".into()));
    }
    Ok(process)
}

/// Opens `/proc/<pid>/ns/<name>` for each namespace the container does not
/// share with this process (a `--network host` container shares the net
/// namespace: joining it again would be a no-op anyway).
fn open_namespaces(pid: Pid) -> Result<(OwnedFd, Vec<(CloneFlags, OwnedFd)>), Error> {
    let open = |name: &str| -> Result<Option<OwnedFd>, Error> {
        let theirs = format!("/proc/{pid}/ns/{name}");
        let file = fs::File::open(&theirs).map_err(|e| Error::Setup {
            id: pid.to_string(),
            detail: format!("open {theirs}: {e}"),
        })?;
        let same = match (
            file.metadata(),
            fs::metadata(format!("/proc/self/ns/{name}")),
        ) {
            (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
            _ => false,
        };
        Ok((!same).then(|| OwnedFd::from(file)))
    };
    let pid_ns = fs::File::open(format!("/proc/{pid}/ns/pid"))
        .map(OwnedFd::from)
        .map_err(|e| Error::Setup {
            id: pid.to_string(),
            detail: format!("open /proc/{pid}/ns/pid: {e}"),
        })?;
    let mut out = Vec::new();
    for (name, flag) in NAMESPACES {
        if let Some(fd) = open(name)? {
            out.push((*flag, fd));
        }
    }
    Ok((pid_ns, out))
}

/// Runs `process` inside the container whose PID 1 is `init_pid` (a host
/// pid), with the container's spec `spec` (its seccomp profile) and returns
/// how the process ended. `before_start` gets the new process's host pid
/// before it joins the container (to put it into the container's cgroup);
/// `started` once its command was executed. `console` is a socket
/// connected to the caller's console socket (used with `process.terminal`).
/// Must be called from a single-threaded process.
pub fn exec(
    spec: &Spec,
    process: Process,
    id: &str,
    init_pid: Pid,
    console: Option<OwnedFd>,
    before_start: &mut dyn FnMut(Pid) -> Result<(), HookError>,
    started: &mut dyn FnMut(Pid),
) -> Result<ExitStatus, Error> {
    let mut exec_spec = spec.clone();
    exec_spec.set_process(Some(process));
    let programs = match spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
        Some(profile) => seccomp::spec_programs(profile)?,
        None => seccomp::default_programs()?,
    };
    let (pid_ns, namespaces) = open_namespaces(init_pid).map_err(|e| match e {
        Error::Setup { detail, .. } => Error::Setup {
            id: id.to_string(),
            detail: format!("the container is not running ({detail})"),
        },
        e => e,
    })?;

    let (sync_read, sync_write) = pipe2(OFlag::O_CLOEXEC).map_err(sys("create the sync pipe"))?;
    let (err_read, err_write) = pipe2(OFlag::O_CLOEXEC).map_err(sys("create the error pipe"))?;
    let mut forwarded = SigSet::empty();
    for sig in FORWARDED {
        forwarded.add(*sig);
    }
    forwarded.add(Signal::SIGCHLD);
    let mut original_mask = SigSet::empty();
    sigprocmask(
        SigmaskHow::SIG_BLOCK,
        Some(&forwarded),
        Some(&mut original_mask),
    )
    .map_err(sys("block signals"))?;
    let _mask_guard = MaskGuard(original_mask);

    // Children of this process are born in the container's pid namespace;
    // this process itself stays where it is.
    setns(&pid_ns, CloneFlags::CLONE_NEWPID).map_err(sys("join the pid namespace"))?;
    // SAFETY: single-threaded (the documented contract), so the child's
    // copy of the process is consistent.
    let child = match unsafe { nix::unistd::fork() }.map_err(sys("fork the exec process"))? {
        ForkResult::Child => {
            drop(sync_write);
            drop(err_read);
            let Err(failure) = child_main(
                &exec_spec,
                &namespaces,
                &programs,
                &original_mask,
                &sync_read,
                console.as_ref(),
            );
            let _ = nix::unistd::write(&err_write, &failure.encode());
            // SAFETY: leaving the forked child without running the
            // parent's destructors or atexit handlers.
            unsafe { nix::libc::_exit(1) }
        }
        ForkResult::Parent { child } => child,
    };
    drop(sync_read);
    drop(err_write);
    drop(namespaces);
    drop(console);

    if let Err(source) = before_start(child) {
        let _ = kill(child, Signal::SIGKILL);
        let _ = waitpid(child, None);
        return Err(Error::Hook {
            id: id.to_string(),
            source,
        });
    }
    if let Err(e) = nix::unistd::write(&sync_write, &[1]) {
        let _ = kill(child, Signal::SIGKILL);
        let _ = waitpid(child, None);
        return Err(Error::Sys {
            what: "start the exec process",
            source: e,
        });
    }
    drop(sync_write);
    let failure = read_failure(err_read);
    if !failure.is_empty() {
        let _ = waitpid(child, None);
        return Err(match Failure::decode(&failure) {
            Failure::NotFound { command, detail } => Error::CommandNotFound {
                id: id.to_string(),
                command,
                detail,
            },
            Failure::NotExecutable { command, detail } => Error::NotExecutable {
                id: id.to_string(),
                command,
                detail,
            },
            Failure::Setup(detail) => Error::Setup {
                id: id.to_string(),
                detail,
            },
        });
    }
    started(child);
    super::wait_forwarding(child, &forwarded)
}

/// The forked child: waits for the go (sent once it is in the cgroup),
/// joins the namespaces, then the privilege drop and exec `init` does for
/// a container's first process. Returns only on failure.
fn child_main(
    spec: &Spec,
    namespaces: &[(CloneFlags, OwnedFd)],
    programs: &[seccompiler::BpfProgram],
    original_mask: &SigSet,
    sync_read: &OwnedFd,
    console: Option<&OwnedFd>,
) -> Result<std::convert::Infallible, Failure> {
    prctl::set_pdeathsig(Signal::SIGKILL).map_err(init::step("set the parent-death signal"))?;
    let mut go = [0u8; 1];
    match nix::unistd::read(sync_read, &mut go) {
        Ok(1) => {}
        _ => {
            return Err(Failure::Setup(
                "the runtime stopped before the start".into(),
            ));
        }
    }
    init::mark_fds_cloexec();
    for (flag, fd) in namespaces {
        setns(fd, *flag).map_err(|e| {
            Failure::Setup(format!(
                "join the container's {} namespace (fd {}): {}",
                ns_name(*flag),
                fd.as_raw_fd(),
                e.desc()
            ))
        })?;
    }
    // setns into a mount namespace leaves the working directory at its
    // root; the spec's cwd is set later.
    if let Some(process) = spec.process().as_ref()
        && process.terminal() == Some(true)
    {
        let sock = console.ok_or_else(|| {
            Failure::Setup("a terminal was asked for without a console socket".into())
        })?;
        // A session of its own, so the pty can become its controlling
        // terminal (the forked child is no group leader: setsid works).
        nix::unistd::setsid().map_err(init::step("setsid"))?;
        let size = process.console_size().map(|b| {
            (
                b.height().min(u16::MAX.into()) as u16,
                b.width().min(u16::MAX.into()) as u16,
            )
        });
        // setup_console closes the descriptor it is given: a copy.
        let copy = nix::unistd::dup(sock).map_err(init::step("dup the console socket"))?;
        init::setup_console(copy.into_raw_fd(), process.user().uid(), size)?;
    }
    init::set_rlimits(spec)?;
    init::drop_privileges_and_exec(spec, programs, original_mask)
}

fn ns_name(flag: CloneFlags) -> &'static str {
    NAMESPACES
        .iter()
        .find(|(_, f)| *f == flag)
        .map_or("?", |(n, _)| n)
}

/// docker's wording of a failed exec, as runc reports it: the part after
/// "OCI runtime exec failed: " (docker adds ": unknown").
pub fn failure_message(error: &Error) -> String {
    let what = match error {
        Error::CommandNotFound { command, .. } if command.contains('/') => {
            format!("exec: \"{command}\": stat {command}: no such file or directory")
        }
        Error::CommandNotFound { command, .. } => {
            format!("exec: \"{command}\": executable file not found in $PATH")
        }
        Error::NotExecutable {
            command, detail, ..
        } if detail.ends_with("is a directory") => {
            format!("exec: \"{command}\": is a directory")
        }
        Error::NotExecutable { command, .. } => format!("exec: \"{command}\": permission denied"),
        Error::Setup { detail, .. } => detail.clone(),
        other => other.to_string(),
    };
    format!("exec failed: unable to start container process: {what}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_messages_are_runcs() {
        let nf = |c: &str| Error::CommandNotFound {
            id: "x".into(),
            command: c.into(),
            detail: String::new(),
        };
        assert_eq!(
            failure_message(&nf("nope")),
            "exec failed: unable to start container process: exec: \"nope\": executable file not found in $PATH"
        );
        assert_eq!(
            failure_message(&nf("/nope")),
            "exec failed: unable to start container process: exec: \"/nope\": stat /nope: no such file or directory"
        );
        let nx = Error::NotExecutable {
            id: "x".into(),
            command: "/etc/passwd".into(),
            detail: "/etc/passwd: permission denied".into(),
        };
        assert_eq!(
            failure_message(&nx),
            "exec failed: unable to start container process: exec: \"/etc/passwd\": permission denied"
        );
    }

    #[test]
    fn a_process_without_args_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("process.json");
        fs::write(&path, r#"{"cwd":"/","user":{"uid":0,"gid":0},"args":[]}"#).unwrap();
        assert!(load_process(&path).is_err());
        fs::write(
            &path,
            r#"{"cwd":"/","user":{"uid":0,"gid":0},"args":["true"]}"#,
        )
        .unwrap();
        assert_eq!(
            load_process(&path).unwrap().args().as_deref(),
            Some(&["true".to_string()][..])
        );
    }
}
