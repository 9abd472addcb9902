//! The built-in OCI runtime: runs an OCI bundle (config.json in runtime-spec
//! form and a rootfs the caller already prepared, e.g. an overlay mount) in
//! the foreground, like `runc run`: the container inherits the caller's
//! stdio and [`run`] returns how it ended.
//!
//! Must run in a small single-threaded process, never inside the tokio
//! daemon: it clones. `wharf-runner runtime run --bundle DIR ID` is that
//! process. The parent side (this file) reads the spec, compiles the seccomp
//! profile, clones the child into new pid/mount/uts/ipc/net namespaces,
//! calls the caller's `before_start` hook with the child's pid (to place it
//! in its cgroup) while the child waits on a pipe, then forwards signals to
//! the child and reaps it. The child side is `init` (namespaces, privileges,
//! exec), `mounts` (filesystem) and `seccomp` (filters).
//!
//! Calls `init`, `mounts`, `seccomp`, nix and oci-spec; knows nothing of
//! images, bundles' making or cgroup managers (the hook is how it meets
//! them).

pub mod exec;
mod init;
mod mounts;
pub mod seccomp;

/// Resolves a container path inside a rootfs (for the daemon's copy-up).
pub use mounts::secure_join;

use std::fmt;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::CloneFlags;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Pid, pipe2};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

pub use init::DEFAULT_PATH;
pub use seccomp::DEFAULT_DENIED;

/// What a `before_start` hook may fail with.
pub type HookError = Box<dyn std::error::Error + Send + Sync>;

/// Stack of the cloned child until it execs.
const CHILD_STACK_SIZE: usize = 8 << 20;

/// The signals the runtime forwards to the container (SIGCHLD is how it
/// learns the container ended).
const FORWARDED: &[Signal] = &[
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGWINCH,
    Signal::SIGCONT,
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read the bundle's config {path}: {source}")]
    Spec {
        path: PathBuf,
        #[source]
        source: oci_spec::OciSpecError,
    },
    #[error("invalid runtime spec {path}: {reason}")]
    InvalidSpec { path: PathBuf, reason: String },
    #[error("rootfs {path}: {source}")]
    Rootfs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("not supported by the built-in runtime: {0}")]
    Unsupported(String),
    #[error(transparent)]
    Seccomp(#[from] seccomp::SeccompError),
    #[error("{what}: {source}")]
    Sys {
        what: &'static str,
        #[source]
        source: Errno,
    },
    #[error("container {id}: the before-start hook failed: {source}")]
    Hook {
        id: String,
        #[source]
        source: HookError,
    },
    #[error("container {id}: exec {command:?} failed: {detail}")]
    CommandNotFound {
        id: String,
        command: String,
        detail: String,
    },
    #[error("container {id}: exec {command:?} failed: {detail}")]
    NotExecutable {
        id: String,
        command: String,
        detail: String,
    },
    #[error("container {id}: setup failed: {detail}")]
    Setup { id: String, detail: String },
}

impl Error {
    /// The exit code docker gives this failure: 127 when the command does
    /// not exist, 126 when it cannot be executed, 125 for everything else
    /// (the runtime's own failure).
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::CommandNotFound { .. } => 127,
            Error::NotExecutable { .. } => 126,
            _ => 125,
        }
    }
}

/// The exit code for a failed execve: 127 when the file (or its
/// interpreter) does not exist, 126 when it exists and cannot be run.
pub fn exec_not_found_code(errno: Errno) -> i32 {
    match errno {
        Errno::ENOENT | Errno::ENOTDIR => 127,
        _ => 126,
    }
}

/// How the container's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Signaled(i32),
}

impl ExitStatus {
    /// The shell's convention: the exit code, or 128 + the signal number.
    pub fn code(self) -> i32 {
        match self {
            ExitStatus::Exited(c) => c,
            ExitStatus::Signaled(s) => 128 + s,
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Exited(c) => write!(f, "exited with code {c}"),
            ExitStatus::Signaled(s) => match Signal::try_from(*s) {
                Ok(sig) => write!(f, "killed by {sig}"),
                Err(_) => write!(f, "killed by signal {s}"),
            },
        }
    }
}

/// The namespaces to create and to join, read from `linux.namespaces`.
#[derive(Debug, PartialEq)]
struct Namespaces {
    /// Passed to clone (the cgroup namespace is not: see `new_cgroup`).
    clone_flags: CloneFlags,
    /// Unshared by the child after the cgroup hook, so its root is the
    /// container's cgroup.
    new_cgroup: bool,
    join: Vec<(CloneFlags, PathBuf)>,
}

fn namespaces(spec: &Spec) -> Result<Namespaces, Error> {
    use LinuxNamespaceType as T;
    let default = [T::Pid, T::Mount, T::Uts, T::Ipc, T::Network, T::Cgroup];
    let listed: Vec<(T, Option<PathBuf>)> =
        match spec.linux().as_ref().and_then(|l| l.namespaces().as_ref()) {
            Some(list) => list.iter().map(|n| (n.typ(), n.path().clone())).collect(),
            None => default.iter().map(|t| (*t, None)).collect(),
        };
    // A new mount namespace always: pivot_root and the mounts need it.
    let mut out = Namespaces {
        clone_flags: CloneFlags::CLONE_NEWNS,
        new_cgroup: false,
        join: Vec::new(),
    };
    for (typ, path) in listed {
        let flag = match typ {
            T::Pid => CloneFlags::CLONE_NEWPID,
            T::Mount => CloneFlags::CLONE_NEWNS,
            T::Uts => CloneFlags::CLONE_NEWUTS,
            T::Ipc => CloneFlags::CLONE_NEWIPC,
            T::Network => CloneFlags::CLONE_NEWNET,
            T::Cgroup => CloneFlags::CLONE_NEWCGROUP,
            T::User | T::Time => {
                return Err(Error::Unsupported(format!("the {typ} namespace")));
            }
        };
        match path {
            Some(path) => {
                if matches!(typ, T::Pid | T::Mount) {
                    return Err(Error::Unsupported(format!(
                        "joining an existing {typ} namespace ({})",
                        path.display()
                    )));
                }
                out.join.push((flag, path));
            }
            None if typ == T::Cgroup => out.new_cgroup = true,
            None => out.clone_flags |= flag,
        }
    }
    Ok(out)
}

/// Restores the signal mask when the parent leaves `run`, however it does.
struct MaskGuard(SigSet);

impl Drop for MaskGuard {
    fn drop(&mut self) {
        let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&self.0), None);
    }
}

fn sys(what: &'static str) -> impl FnOnce(Errno) -> Error {
    move |source| Error::Sys { what, source }
}

/// Runs the bundle at `bundle` as container `id` in the foreground and
/// returns how its process ended. `before_start` gets the container's pid
/// (as seen from the caller's pid namespace) before the container does
/// anything; use it to put the process into its cgroup. Must be called from
/// a single-threaded process.
pub fn run(
    bundle: &Path,
    id: &str,
    before_start: &mut dyn FnMut(Pid) -> Result<(), HookError>,
) -> Result<ExitStatus, Error> {
    run_with_hooks(bundle, id, before_start, &mut |_| {})
}

/// [`run`], and `started` is called with the container's pid once its
/// command was executed (the point where `runc run` would report the
/// container running; a caller writes its pid file there).
pub fn run_with_hooks(
    bundle: &Path,
    id: &str,
    before_start: &mut dyn FnMut(Pid) -> Result<(), HookError>,
    started: &mut dyn FnMut(Pid),
) -> Result<ExitStatus, Error> {
    run_with_console(bundle, id, None, before_start, started)
}

/// [`run_with_hooks`] with runc's console protocol: with
/// `process.terminal`, the container's pty master is sent over `console`
/// (a socket connected to the caller's `--console-socket`).
pub fn run_with_console(
    bundle: &Path,
    id: &str,
    console: Option<OwnedFd>,
    before_start: &mut dyn FnMut(Pid) -> Result<(), HookError>,
    started: &mut dyn FnMut(Pid),
) -> Result<ExitStatus, Error> {
    let config = bundle.join("config.json");
    let spec = Spec::load(&config).map_err(|source| Error::Spec {
        path: config.clone(),
        source,
    })?;
    let invalid = |reason: &str| Error::InvalidSpec {
        path: config.clone(),
        reason: reason.to_string(),
    };
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| invalid("no process"))?;
    if process.args().as_ref().is_none_or(|a| a.is_empty()) {
        return Err(invalid("process.args is empty"));
    }
    let root = spec.root().as_ref().ok_or_else(|| invalid("no root"))?;
    let rootfs_path = bundle.join(root.path());
    let rootfs = rootfs_path
        .canonicalize()
        .and_then(|p| {
            if p.is_dir() {
                Ok(p)
            } else {
                Err(std::io::Error::other("not a directory"))
            }
        })
        .map_err(|source| Error::Rootfs {
            path: rootfs_path.clone(),
            source,
        })?;
    let bundle = bundle.canonicalize().map_err(|source| Error::Rootfs {
        path: bundle.to_path_buf(),
        source,
    })?;
    let ns = namespaces(&spec)?;
    let programs = match spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
        Some(profile) => seccomp::spec_programs(profile)?,
        None => seccomp::default_programs()?,
    };

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

    let setup = init::ChildSetup {
        spec: &spec,
        bundle: &bundle,
        rootfs: &rootfs,
        join: &ns.join,
        new_cgroup_ns: ns.new_cgroup,
        new_uts_ns: ns.clone_flags.contains(CloneFlags::CLONE_NEWUTS),
        seccomp: &programs,
        original_mask,
        parent_fds: [sync_write.as_raw_fd(), err_read.as_raw_fd()],
        console: console.as_ref().map(|c| c.as_raw_fd()),
    };
    let mut stack = vec![0u8; CHILD_STACK_SIZE];
    let child_sync = &sync_read;
    let child_err = &err_write;
    let callback = Box::new(|| init::child_main(&setup, child_sync, child_err));
    // SAFETY: the process is single-threaded (the documented contract of
    // `run`), so the child's copy of memory is consistent; the child runs on
    // `stack`, which outlives it in the child's copy of the address space.
    let child = unsafe {
        nix::sched::clone(
            callback,
            &mut stack,
            ns.clone_flags,
            Some(Signal::SIGCHLD as i32),
        )
    }
    .map_err(sys("clone the container process"))?;
    drop(sync_read);
    drop(err_write);
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
            what: "start the container process",
            source: e,
        });
    }
    drop(sync_write);

    let failure = read_failure(err_read);
    if !failure.is_empty() {
        let _ = waitpid(child, None);
        return Err(match init::Failure::decode(&failure) {
            init::Failure::NotFound { command, detail } => Error::CommandNotFound {
                id: id.to_string(),
                command,
                detail,
            },
            init::Failure::NotExecutable { command, detail } => Error::NotExecutable {
                id: id.to_string(),
                command,
                detail,
            },
            init::Failure::Setup(detail) => Error::Setup {
                id: id.to_string(),
                detail,
            },
        });
    }
    started(child);
    wait_forwarding(child, &forwarded)
}

/// Everything the child wrote before the pipe closed (at execve, or at its
/// exit after writing a failure).
fn read_failure(err_read: OwnedFd) -> Vec<u8> {
    let mut file = std::fs::File::from(err_read);
    let mut buf = Vec::new();
    // Bounded: a failure message is short; a child gone wrong cannot make
    // the runtime hold more than this.
    let _ = (&mut file).take(64 * 1024).read_to_end(&mut buf);
    buf
}

/// Waits for the container, passing on the signals the runtime receives.
fn wait_forwarding(child: Pid, signals: &SigSet) -> Result<ExitStatus, Error> {
    loop {
        // The child may already be gone (SIGCHLD pending); check first.
        loop {
            match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) if pid == child => {
                    return Ok(ExitStatus::Exited(code));
                }
                Ok(WaitStatus::Signaled(pid, sig, _)) if pid == child => {
                    return Ok(ExitStatus::Signaled(sig as i32));
                }
                Ok(WaitStatus::StillAlive) => break,
                Ok(_) => continue,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    return Err(Error::Sys {
                        what: "wait for the container",
                        source: e,
                    });
                }
            }
        }
        let sig = signals.wait().map_err(sys("wait for signals"))?;
        if sig != Signal::SIGCHLD {
            match kill(child, sig) {
                Ok(()) | Err(Errno::ESRCH) => {}
                Err(e) => {
                    return Err(Error::Sys {
                        what: "forward a signal to the container",
                        source: e,
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxBuilder, LinuxNamespaceBuilder, SpecBuilder};

    fn ns(typ: LinuxNamespaceType, path: Option<&str>) -> oci_spec::runtime::LinuxNamespace {
        let b = LinuxNamespaceBuilder::default().typ(typ);
        match path {
            Some(p) => b.path(p).build().unwrap(),
            None => b.build().unwrap(),
        }
    }

    fn spec_with(list: Vec<oci_spec::runtime::LinuxNamespace>) -> Spec {
        SpecBuilder::default()
            .linux(LinuxBuilder::default().namespaces(list).build().unwrap())
            .build()
            .unwrap()
    }

    #[test]
    fn namespaces_follow_the_spec_and_cgroup_is_unshared_later() {
        use LinuxNamespaceType as T;
        let got = namespaces(&spec_with(vec![
            ns(T::Pid, None),
            ns(T::Uts, None),
            ns(T::Cgroup, None),
            ns(T::Network, Some("/proc/1/ns/net")),
        ]))
        .unwrap();
        assert_eq!(
            got.clone_flags,
            CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWUTS
        );
        assert!(got.new_cgroup);
        assert_eq!(
            got.join,
            vec![(CloneFlags::CLONE_NEWNET, PathBuf::from("/proc/1/ns/net"))]
        );
    }

    #[test]
    fn user_namespaces_and_joining_pid_namespaces_are_refused() {
        use LinuxNamespaceType as T;
        assert!(matches!(
            namespaces(&spec_with(vec![ns(T::User, None)])),
            Err(Error::Unsupported(_))
        ));
        assert!(matches!(
            namespaces(&spec_with(vec![ns(T::Pid, Some("/proc/1/ns/pid"))])),
            Err(Error::Unsupported(_))
        ));
    }

    #[test]
    fn exit_codes_follow_docker() {
        assert_eq!(exec_not_found_code(Errno::ENOENT), 127);
        assert_eq!(exec_not_found_code(Errno::EACCES), 126);
        assert_eq!(exec_not_found_code(Errno::ENOEXEC), 126);
        assert_eq!(ExitStatus::Exited(7).code(), 7);
        assert_eq!(ExitStatus::Signaled(9).code(), 137);
        let err = Error::CommandNotFound {
            id: "c".into(),
            command: "nope".into(),
            detail: "executable file not found in $PATH".into(),
        };
        assert_eq!(err.exit_code(), 127);
        assert!(err.to_string().contains("nope"));
    }

    #[test]
    fn a_missing_config_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = run(dir.path(), "c1", &mut |_| Ok(())).unwrap_err();
        assert!(matches!(err, Error::Spec { .. }));
        assert!(err.to_string().contains("config.json"), "{err}");
        assert_eq!(err.exit_code(), 125);
    }
}
