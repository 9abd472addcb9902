//! The container side of the built-in runtime: what the cloned child does
//! between clone and execve. It waits for the parent's go (sent once the
//! cgroup hook ran), enters the cgroup namespace, builds the filesystem
//! (`mounts`), sets hostname and rlimits, drops to the spec's user and
//! capabilities, sets no_new_privs, installs seccomp and execs the command,
//! which so becomes PID 1 of the container.
//!
//! Called by `runtime` (inside the clone callback, in a single-threaded
//! process); calls `mounts`, `seccomp`, nix and caps. On failure it writes a
//! [`Failure`] to the error pipe, which the parent decodes; on success the
//! pipe (close-on-exec) just closes at execve.

use std::ffi::CString;
use std::fs;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use caps::{CapSet, CapsHashSet};
use nix::errno::Errno;
use nix::libc;
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::prctl;
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, sigprocmask};
use nix::unistd::{AccessFlags, Gid, Uid, access, execve, setgid, setgroups, sethostname, setuid};
use oci_spec::runtime::{Capabilities, PosixRlimitType, Spec};
use seccompiler::BpfProgram;

use super::{mounts, seccomp};

/// The PATH used to find the command when the spec's env has none (docker's).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What the child tells the parent when it cannot exec the command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The command does not exist (exit code 127).
    NotFound { command: String, detail: String },
    /// The command exists but cannot be executed (exit code 126).
    NotExecutable { command: String, detail: String },
    /// Any other setup step failed.
    Setup(String),
}

impl Failure {
    pub fn encode(&self) -> Vec<u8> {
        let (kind, command, detail) = match self {
            Failure::NotFound { command, detail } => (b'N', command.as_str(), detail.as_str()),
            Failure::NotExecutable { command, detail } => (b'X', command.as_str(), detail.as_str()),
            Failure::Setup(detail) => (b'E', "", detail.as_str()),
        };
        let mut out = vec![kind];
        out.extend_from_slice(command.as_bytes());
        out.push(0);
        out.extend_from_slice(detail.as_bytes());
        out
    }

    /// The parent's reading of what the child wrote; garbage becomes a
    /// setup failure carrying it.
    pub fn decode(bytes: &[u8]) -> Failure {
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let Some((&kind, rest)) = bytes.split_first() else {
            return Failure::Setup("the container process failed without a message".into());
        };
        let (command, detail) = match rest.iter().position(|b| *b == 0) {
            Some(i) => (text(&rest[..i]), text(&rest[i + 1..])),
            None => (String::new(), text(rest)),
        };
        match kind {
            b'N' => Failure::NotFound { command, detail },
            b'X' => Failure::NotExecutable { command, detail },
            b'E' => Failure::Setup(detail),
            _ => Failure::Setup(text(bytes)),
        }
    }
}

/// Everything the child needs, prepared by the parent before clone.
pub struct ChildSetup<'a> {
    pub spec: &'a Spec,
    pub bundle: &'a Path,
    pub rootfs: &'a Path,
    /// Existing namespaces to join (`linux.namespaces[].path`).
    pub join: &'a [(CloneFlags, PathBuf)],
    pub new_cgroup_ns: bool,
    pub new_uts_ns: bool,
    pub seccomp: &'a [BpfProgram],
    /// The signal mask to restore before exec (the parent blocks signals).
    pub original_mask: SigSet,
    /// The parent's ends of the pipes, closed first thing in the child so
    /// the sync pipe reads EOF if the parent goes away.
    pub parent_fds: [RawFd; 2],
    /// A socket connected to the caller's console socket: with
    /// `process.terminal`, the child makes a pty in the container's
    /// devpts, sends the master there and takes the slave as its stdio and
    /// controlling terminal (runc's `--console-socket`).
    pub console: Option<RawFd>,
}

/// The clone callback's body. Never returns on success (execve).
pub fn child_main(setup: &ChildSetup, sync_read: &OwnedFd, err_write: &OwnedFd) -> isize {
    let Err(failure) = run(setup, sync_read);
    let msg = failure.encode();
    let _ = nix::unistd::write(err_write, &msg);
    1
}

pub(super) fn step(what: &str) -> impl FnOnce(Errno) -> Failure + '_ {
    move |e| Failure::Setup(format!("{what}: {}", e.desc()))
}

fn run(setup: &ChildSetup, sync_read: &OwnedFd) -> Result<std::convert::Infallible, Failure> {
    for fd in setup.parent_fds {
        // SAFETY: these are the child's copies of the parent's pipe ends;
        // nothing in the child uses or owns them.
        unsafe { libc::close(fd) };
    }
    // If the runtime process dies, so does the container.
    prctl::set_pdeathsig(Signal::SIGKILL).map_err(step("set the parent-death signal"))?;
    let mut go = [0u8; 1];
    match nix::unistd::read(sync_read, &mut go) {
        Ok(1) => {}
        _ => {
            return Err(Failure::Setup(
                "the runtime stopped before the start".into(),
            ));
        }
    }
    mark_fds_cloexec();
    nix::unistd::setsid().map_err(step("setsid"))?;
    let spec = setup.spec;
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| Failure::Setup("the spec has no process".into()))?;
    if process.terminal() == Some(true)
        && setup.console.is_none()
        && nix::unistd::isatty(std::io::stdin()).unwrap_or(false)
    {
        // SAFETY: TIOCSCTTY on fd 0 takes an int argument and touches no memory.
        unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) };
    }

    for (flag, path) in setup.join {
        let fd = fs::File::open(path)
            .map_err(|e| Failure::Setup(format!("open namespace {}: {e}", path.display())))?;
        setns(&fd, *flag).map_err(|e| {
            Failure::Setup(format!("join namespace {}: {}", path.display(), e.desc()))
        })?;
    }
    if setup.new_cgroup_ns {
        // After the parent placed us in the container's cgroup, so that
        // cgroup becomes the namespace's root.
        unshare(CloneFlags::CLONE_NEWCGROUP).map_err(step("new cgroup namespace"))?;
    }

    mounts::prepare_rootfs(spec, setup.rootfs, setup.bundle).map_err(Failure::Setup)?;
    mounts::pivot_into(setup.rootfs).map_err(Failure::Setup)?;
    if let Some(sock) = setup.console
        && process.terminal() == Some(true)
    {
        let size = process.console_size().map(|b| {
            (
                b.height().min(u16::MAX.into()) as u16,
                b.width().min(u16::MAX.into()) as u16,
            )
        });
        setup_console(sock, process.user().uid(), size)?;
    }
    // Before /proc/sys turns read-only.
    set_sysctls(spec)?;
    if let Some(adj) = process.oom_score_adj() {
        fs::write("/proc/self/oom_score_adj", adj.to_string())
            .map_err(|e| Failure::Setup(format!("set oom_score_adj to {adj}: {e}")))?;
    }
    mounts::restrict(spec).map_err(Failure::Setup)?;

    if setup.new_uts_ns {
        if let Some(hostname) = spec.hostname() {
            sethostname(hostname).map_err(step("sethostname"))?;
        }
        if let Some(domain) = spec.domainname() {
            let name = cstring(domain.as_bytes())?;
            // SAFETY: a valid C string and its length; nix has no wrapper.
            let rc = unsafe { libc::setdomainname(name.as_ptr(), domain.len()) };
            if rc != 0 {
                return Err(Failure::Setup(format!(
                    "setdomainname: {}",
                    Errno::last().desc()
                )));
            }
        }
    }
    set_rlimits(spec)?;
    drop_privileges_and_exec(spec, setup.seccomp, &setup.original_mask)
}

/// The last steps before the command runs, shared by a container's init and
/// by `exec` (`super::exec`): seccomp (before the capability drop when
/// no_new_privs is off, as the kernel then wants CAP_SYS_ADMIN), the spec's
/// user and capabilities, the parent-death signal, the working directory,
/// no_new_privs, the lookup of the command (127 / 126 like docker), the
/// signal mask, then execve. Returns only on failure.
pub(super) fn drop_privileges_and_exec(
    spec: &Spec,
    seccomp_programs: &[BpfProgram],
    original_mask: &SigSet,
) -> Result<std::convert::Infallible, Failure> {
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| Failure::Setup("the spec has no process".into()))?;
    let no_new_privs = process.no_new_privileges() == Some(true);
    if !no_new_privs {
        // Without no_new_privs the kernel wants CAP_SYS_ADMIN to install a
        // filter, so it goes in before the capabilities are dropped.
        seccomp::install(seccomp_programs).map_err(|e| Failure::Setup(e.to_string()))?;
    }

    set_user_and_caps(spec)?;
    // The kernel clears the parent-death signal when the uid changes.
    prctl::set_pdeathsig(Signal::SIGKILL).map_err(step("set the parent-death signal"))?;

    let cwd = process.cwd();
    nix::unistd::chdir(cwd).map_err(|e| {
        Failure::Setup(format!(
            "chdir to the working directory {}: {}",
            cwd.display(),
            e.desc()
        ))
    })?;

    if no_new_privs {
        prctl::set_no_new_privs().map_err(step("set no_new_privs"))?;
    }

    let args = process.args().as_deref().unwrap_or_default();
    let Some(command) = args.first() else {
        return Err(Failure::Setup("the spec's process has no args".into()));
    };
    let env: Vec<String> = process.env().clone().unwrap_or_default();
    let path_var = env
        .iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(DEFAULT_PATH);
    let program = resolve_command(command, path_var)?;
    let c_program = cstring(program.as_os_str().as_bytes())?;
    let c_args = args
        .iter()
        .map(|a| cstring(a.as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;
    let c_env = env
        .iter()
        .map(|a| cstring(a.as_bytes()))
        .collect::<Result<Vec<_>, _>>()?;

    if no_new_privs {
        seccomp::install(seccomp_programs).map_err(|e| Failure::Setup(e.to_string()))?;
    }
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(original_mask), None)
        .map_err(step("restore the signal mask"))?;
    let Err(errno) = execve(&c_program, &c_args, &c_env);
    let detail = format!("exec {}: {}", program.display(), errno.desc());
    Err(if super::exec_not_found_code(errno) == 127 {
        Failure::NotFound {
            command: command.clone(),
            detail,
        }
    } else {
        Failure::NotExecutable {
            command: command.clone(),
            detail,
        }
    })
}

/// Makes the container's terminal: a pty from the container's own devpts
/// (so its name is `/dev/pts/0` inside), the master sent to `sock`, the
/// slave made stdin, stdout, stderr and the controlling terminal.
pub(super) fn setup_console(
    sock: RawFd,
    uid: u32,
    size: Option<(u16, u16)>,
) -> Result<(), Failure> {
    use nix::fcntl::OFlag;
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(step("open /dev/ptmx"))?;
    nix::pty::grantpt(&master).map_err(step("grantpt"))?;
    nix::pty::unlockpt(&master).map_err(step("unlockpt"))?;
    let name = nix::pty::ptsname_r(&master).map_err(step("ptsname"))?;
    let slave = nix::fcntl::open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| Failure::Setup(format!("open {name}: {}", e.desc())))?;
    if let Some((rows, cols)) = size {
        crate::stdio::set_winsize(master.as_raw_fd(), rows, cols)
            .map_err(|e| Failure::Setup(format!("set the terminal size: {e}")))?;
    }
    nix::unistd::fchown(&slave, Some(Uid::from_raw(uid)), None)
        .map_err(|e| Failure::Setup(format!("chown {name}: {}", e.desc())))?;
    crate::stdio::send_fd(sock, master.as_raw_fd(), &name)
        .map_err(|e| Failure::Setup(format!("send the pty to the console socket: {e}")))?;
    drop(master);
    // SAFETY: the caller's socket, only used here; closing it ends its use.
    unsafe { libc::close(sock) };
    nix::unistd::dup2_stdin(&slave).map_err(step("dup the pty to stdin"))?;
    nix::unistd::dup2_stdout(&slave).map_err(step("dup the pty to stdout"))?;
    nix::unistd::dup2_stderr(&slave).map_err(step("dup the pty to stderr"))?;
    drop(slave);
    // SAFETY: TIOCSCTTY on fd 0 takes an int argument and touches no memory.
    if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } != 0 {
        return Err(Failure::Setup(format!(
            "make the pty the controlling terminal: {}",
            Errno::last().desc()
        )));
    }
    Ok(())
}

fn cstring(bytes: &[u8]) -> Result<CString, Failure> {
    CString::new(bytes).map_err(|_| {
        Failure::Setup(format!(
            "{:?} contains a NUL byte",
            String::from_utf8_lossy(bytes)
        ))
    })
}

/// Marks every descriptor above stderr close-on-exec so nothing of the
/// runtime leaks into the container (the error pipe already is).
pub(super) fn mark_fds_cloexec() {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range with CLOEXEC only changes descriptor flags.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, CLOSE_RANGE_CLOEXEC) };
    if rc == 0 {
        return;
    }
    if let Ok(entries) = fs::read_dir("/proc/self/fd") {
        let fds: Vec<i32> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
            .filter(|fd| *fd > 2)
            .collect();
        for fd in fds {
            // SAFETY: setting FD_CLOEXEC on a descriptor number, valid or not.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
}

/// Finds `command` the way execvp would, but tells "not found" (127) from
/// "found and not executable" (126) like docker does.
pub fn resolve_command(command: &str, path_var: &str) -> Result<PathBuf, Failure> {
    let not_found = |detail: String| Failure::NotFound {
        command: command.to_string(),
        detail,
    };
    let not_executable = |detail: String| Failure::NotExecutable {
        command: command.to_string(),
        detail,
    };
    let check = |path: &Path| -> Result<(), Failure> {
        let md = fs::metadata(path).map_err(|e| {
            if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) {
                not_found(format!("{}: no such file or directory", path.display()))
            } else {
                not_executable(format!("{}: {e}", path.display()))
            }
        })?;
        if md.is_dir() {
            return Err(not_executable(format!(
                "{}: is a directory",
                path.display()
            )));
        }
        if md.permissions().mode() & 0o111 == 0 || access(path, AccessFlags::X_OK).is_err() {
            return Err(not_executable(format!(
                "{}: permission denied",
                path.display()
            )));
        }
        Ok(())
    };
    if command.is_empty() {
        return Err(not_found("the command is empty".into()));
    }
    if command.contains('/') {
        let path = PathBuf::from(command);
        check(&path)?;
        return Ok(path);
    }
    let mut first_error = None;
    for dir in path_var.split(':') {
        let dir = if dir.is_empty() { "." } else { dir };
        let candidate = Path::new(dir).join(command);
        match check(&candidate) {
            Ok(()) => return Ok(candidate),
            Err(e @ Failure::NotExecutable { .. }) => {
                first_error.get_or_insert(e);
            }
            Err(_) => {}
        }
    }
    Err(first_error
        .unwrap_or_else(|| not_found(format!("executable file not found in $PATH ({path_var})"))))
}

/// Whether a sysctl belongs to one of the container's namespaces (the
/// ones docker accepts); the others would change the host.
pub fn sysctl_is_namespaced(key: &str) -> bool {
    const IPC: &[&str] = &[
        "kernel.msgmax",
        "kernel.msgmnb",
        "kernel.msgmni",
        "kernel.sem",
        "kernel.shmall",
        "kernel.shmmax",
        "kernel.shmmni",
        "kernel.shm_rmid_forced",
    ];
    IPC.contains(&key)
        || key.starts_with("fs.mqueue.")
        || key.starts_with("net.")
        || key == "kernel.hostname"
        || key == "kernel.domainname"
}

/// Writes the spec's sysctls under /proc/sys; refuses host-wide ones and
/// keys that try to leave /proc/sys.
fn set_sysctls(spec: &Spec) -> Result<(), Failure> {
    let sysctls = spec.linux().as_ref().and_then(|l| l.sysctl().as_ref());
    for (key, value) in sysctls.into_iter().flatten() {
        if !sysctl_is_namespaced(key)
            || key.contains('/')
            || key.split('.').any(|p| p.is_empty() || p == "..")
        {
            return Err(Failure::Setup(format!(
                "sysctl {key} is not namespaced and cannot be set in a container"
            )));
        }
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        fs::write(&path, value)
            .map_err(|e| Failure::Setup(format!("sysctl {key}={value}: {e}")))?;
    }
    Ok(())
}

fn rlimit_resource(typ: PosixRlimitType) -> Resource {
    match typ {
        PosixRlimitType::RlimitCpu => Resource::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => Resource::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => Resource::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => Resource::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => Resource::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => Resource::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => Resource::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => Resource::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => Resource::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => Resource::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => Resource::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => Resource::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => Resource::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => Resource::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => Resource::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => Resource::RLIMIT_RTTIME,
    }
}

/// Sets the spec's rlimits, never above the current hard limit (raising it
/// needs CAP_SYS_RESOURCE, which the runtime may not have).
pub(super) fn set_rlimits(spec: &Spec) -> Result<(), Failure> {
    let rlimits = spec.process().as_ref().and_then(|p| p.rlimits().as_ref());
    for rl in rlimits.into_iter().flatten() {
        let resource = rlimit_resource(rl.typ());
        let (_, current_hard) = getrlimit(resource).map_err(step("getrlimit"))?;
        let hard = rl.hard().min(current_hard);
        let soft = rl.soft().min(hard);
        setrlimit(resource, soft, hard)
            .map_err(|e| Failure::Setup(format!("setrlimit {}: {}", rl.typ(), e.desc())))?;
    }
    Ok(())
}

fn to_caps(set: Option<&Capabilities>) -> CapsHashSet {
    set.into_iter()
        .flatten()
        .filter_map(|c| format!("CAP_{c}").parse::<caps::Capability>().ok())
        .collect()
}

/// Bounding set first (needs CAP_SETPCAP), then the user switch keeping the
/// permitted set (PR_SET_KEEPCAPS), then the spec's effective, inheritable,
/// permitted and ambient sets. A spec without capabilities gets none.
fn set_user_and_caps(spec: &Spec) -> Result<(), Failure> {
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| Failure::Setup("the spec has no process".into()))?;
    let spec_caps = process.capabilities().as_ref();
    let bounding = to_caps(spec_caps.and_then(|c| c.bounding().as_ref()));
    let effective = to_caps(spec_caps.and_then(|c| c.effective().as_ref()));
    let inheritable = to_caps(spec_caps.and_then(|c| c.inheritable().as_ref()));
    let permitted = to_caps(spec_caps.and_then(|c| c.permitted().as_ref()));
    let ambient = to_caps(spec_caps.and_then(|c| c.ambient().as_ref()));
    let caps_err = |what: &str| {
        let what = what.to_string();
        move |e: caps::errors::CapsError| Failure::Setup(format!("{what}: {e}"))
    };

    for cap in caps::runtime::thread_all_supported() {
        if !bounding.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(caps_err("drop from the bounding set"))?;
        }
    }

    let user = process.user();
    if let Some(umask) = user.umask() {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(umask));
    }
    prctl::set_keepcaps(true).map_err(step("keep capabilities"))?;
    let groups: Vec<Gid> = user
        .additional_gids()
        .iter()
        .flatten()
        .copied()
        .map(Gid::from_raw)
        .collect();
    setgroups(&groups).map_err(step("setgroups"))?;
    setgid(Gid::from_raw(user.gid()))
        .map_err(|e| Failure::Setup(format!("setgid {}: {}", user.gid(), e.desc())))?;
    setuid(Uid::from_raw(user.uid()))
        .map_err(|e| Failure::Setup(format!("setuid {}: {}", user.uid(), e.desc())))?;
    prctl::set_keepcaps(false).map_err(step("clear keep capabilities"))?;

    caps::set(None, CapSet::Effective, &effective).map_err(caps_err("set effective caps"))?;
    caps::set(None, CapSet::Inheritable, &inheritable).map_err(caps_err("set inheritable caps"))?;
    caps::set(None, CapSet::Permitted, &permitted).map_err(caps_err("set permitted caps"))?;
    if caps::runtime::ambient_set_supported().is_ok() {
        caps::clear(None, CapSet::Ambient).map_err(caps_err("clear ambient caps"))?;
        for cap in ambient {
            caps::raise(None, CapSet::Ambient, cap).map_err(caps_err("raise ambient cap"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn only_namespaced_sysctls_are_accepted() {
        assert!(sysctl_is_namespaced("net.ipv4.ip_forward"));
        assert!(sysctl_is_namespaced("kernel.shmmax"));
        assert!(sysctl_is_namespaced("fs.mqueue.msg_max"));
        assert!(!sysctl_is_namespaced("kernel.panic"));
        assert!(!sysctl_is_namespaced("vm.overcommit_memory"));
    }

    #[test]
    fn failures_round_trip_through_the_pipe_encoding() {
        for f in [
            Failure::NotFound {
                command: "nope".into(),
                detail: "not in PATH".into(),
            },
            Failure::NotExecutable {
                command: "/etc/hostname".into(),
                detail: "permission denied".into(),
            },
            Failure::Setup("mount proc: EPERM".into()),
        ] {
            assert_eq!(Failure::decode(&f.encode()), f);
        }
        assert!(matches!(Failure::decode(b""), Failure::Setup(_)));
        assert!(matches!(Failure::decode(b"?junk"), Failure::Setup(_)));
    }

    #[test]
    fn resolve_tells_missing_from_not_executable() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        fs::create_dir(&bin).unwrap();
        let tool = bin.join("tool");
        fs::write(&tool, "#!/bin/sh\n").unwrap();
        fs::set_permissions(&tool, fs::Permissions::from_mode(0o755)).unwrap();
        let data = bin.join("data");
        fs::write(&data, "x").unwrap();
        fs::set_permissions(&data, fs::Permissions::from_mode(0o644)).unwrap();
        let path = format!("/nonexistent:{}", bin.display());

        assert_eq!(resolve_command("tool", &path).unwrap(), tool);
        assert!(matches!(
            resolve_command("missing", &path),
            Err(Failure::NotFound { .. })
        ));
        assert!(matches!(
            resolve_command("data", &path),
            Err(Failure::NotExecutable { .. })
        ));
        assert!(matches!(
            resolve_command(data.to_str().unwrap(), &path),
            Err(Failure::NotExecutable { .. })
        ));
        assert!(matches!(
            resolve_command(bin.to_str().unwrap(), &path),
            Err(Failure::NotExecutable { .. })
        ));
        assert!(matches!(
            resolve_command("/no/such/file", &path),
            Err(Failure::NotFound { .. })
        ));
    }
}
