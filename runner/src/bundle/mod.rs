//! The OCI bundle: turns an image config plus `docker run`-style options
//! into a runtime-spec `config.json`, and writes it.
//!
//! The spec is the boundary between "what to run" and "how to run it":
//! everything docker decides when it creates a container (the command line
//! from Entrypoint/Cmd, the environment, the user, mounts, masked paths,
//! namespaces, capabilities, seccomp, rlimits, cgroup resources) is decided
//! here, once, and written down; the runtimes (built-in or runc) only carry
//! it out. Called by the container lifecycle code; calls `oci-spec`
//! builders, reads the image's `/etc/passwd` and `/etc/group` (see `user`),
//! and reads this process's `RLIMIT_NOFILE`. It never mounts or forks.
//!
//! Docker's rules are reproduced, not its code: moby's `oci/defaults.go`
//! and `daemon/oci_linux.go` for the defaults, its config merge for
//! Entrypoint/Cmd, `CreateDaemonEnvironment` for the environment, runc's
//! `GetExecUser` for users.

mod defaults;
mod parse;
mod user;

use std::collections::HashSet;
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};

use oci_spec::OciSpecError;
use oci_spec::image::ImageConfiguration;
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxMemoryBuilder,
    LinuxNamespace, LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder,
    LinuxResourcesBuilder, Mount, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};

pub use defaults::{
    BLOCKED_SYSCALLS, DEFAULT_CAPABILITIES, MASKED_PATHS, NOFILE_HARD, NOFILE_SOFT, READONLY_PATHS,
    bind_mount, current_nofile_hard, default_device_cgroup, default_devices, default_mounts,
    default_seccomp, nofile_rlimit,
};
pub use parse::{parse_env_file, parse_env_file_with, parse_memory, resolve_env_arg};
pub use user::{ResolvedUser, resolve_user, resolve_user_with};

/// `PATH` when neither the image nor the user sets one (docker's).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The smallest memory limit docker accepts (6 MiB).
pub const MIN_MEMORY: i64 = 6 << 20;
/// The CFS period `--cpus` is expressed in, in microseconds.
pub const CPU_PERIOD: u64 = 100_000;
/// Kernel bounds for `cpu.shares`; docker clamps into them.
const MIN_CPU_SHARES: u64 = 2;
const MAX_CPU_SHARES: u64 = 262_144;
/// `HOST_NAME_MAX`.
const MAX_HOSTNAME: usize = 64;
/// The file name of the spec inside a bundle.
pub const CONFIG_JSON: &str = "config.json";

/// Everything that can be wrong with a run request or its image; each
/// variant names the value at fault.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("no command specified")]
    NoCommand,
    #[error("unable to find user {0}: no matching entries in passwd file")]
    UnknownUser(String),
    #[error("unable to find group {0}: no matching entries in group file")]
    UnknownGroup(String),
    #[error("invalid user {user:?}: {reason}")]
    InvalidUser { user: String, reason: &'static str },
    #[error("invalid size {value:?}: {reason}")]
    InvalidSize { value: String, reason: &'static str },
    #[error("invalid {option}: {reason}")]
    InvalidResource {
        option: &'static str,
        reason: String,
    },
    #[error("invalid environment variable {entry:?}: {reason}")]
    InvalidEnv { entry: String, reason: &'static str },
    #[error("the working directory {0:?} is invalid, it needs to be an absolute path")]
    InvalidWorkdir(String),
    #[error("invalid hostname {0:?}: {1}")]
    InvalidHostname(String, &'static str),
    #[error("invalid {what} {value:?}: contains a NUL byte")]
    NulByte { what: &'static str, value: String },
    #[error("reading {path} in the image rootfs: {source}")]
    RootfsRead { path: String, source: io::Error },
    #[error("writing {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("building the runtime spec: {0}")]
    Spec(#[from] OciSpecError),
    #[error("serializing the runtime spec: {0}")]
    Json(#[from] serde_json::Error),
}

/// The container's network.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NetworkMode {
    /// A new network namespace holding only loopback (`--network none`).
    #[default]
    None,
    /// The host's network namespace (`--network host`): no net namespace,
    /// and the default hostname is the host's, as docker does.
    Host,
}

/// What `docker run` lets a user set, already parsed by the CLI.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunOptions {
    /// The container id; its first 12 characters are the default hostname.
    pub container_id: String,
    /// Arguments after the image name; `None` or empty: the image's Cmd.
    pub cmd: Option<Vec<String>>,
    /// `--entrypoint`: replaces the image's Entrypoint and drops its Cmd;
    /// `Some(vec![])` clears the Entrypoint.
    pub entrypoint: Option<Vec<String>>,
    /// `KEY=value` from `--env-file` then `-e`, in that order; they override
    /// the image's Env. A bare `KEY` removes `KEY`.
    pub env: Vec<String>,
    /// `-w`: overrides the image's WorkingDir; must be absolute.
    pub workdir: Option<String>,
    /// `-u USER[:GROUP]`, names or ids; overrides the image's User.
    pub user: Option<String>,
    /// `-h`; default: the container id's first 12 characters.
    pub hostname: Option<String>,
    /// `-m`, bytes (see [`parse_memory`]); 0 or `None`: unlimited.
    pub memory: Option<i64>,
    /// `--memory-swap`, bytes of memory plus swap; -1 unlimited; default
    /// twice `memory`.
    pub memory_swap: Option<i64>,
    /// `--cpus`, fractional CPUs.
    pub cpus: Option<f64>,
    /// `--cpu-shares`, relative weight (clamped to 2..=262144).
    pub cpu_shares: Option<u64>,
    /// `--pids-limit`; 0 or negative: unlimited.
    pub pids_limit: Option<i64>,
    pub network: NetworkMode,
    /// A network namespace to join instead of making one (the daemon's
    /// bridge network makes it before the start).
    pub network_namespace: Option<PathBuf>,
    /// `--read-only`: the rootfs is mounted read-only.
    pub read_only: bool,
    /// `-t`: a terminal, and `TERM=xterm`.
    pub tty: bool,
    /// The cgroup path for `linux.cgroupsPath`; empty: left to the runtime.
    pub cgroups_path: String,
    /// Extra mounts after docker's defaults (volumes, `/etc/hosts`, ...).
    pub mounts: Vec<Mount>,
}

/// Builds the runtime spec for running `image` with `opts`. `rootfs` is the
/// container's root filesystem (read only for `etc/passwd` and `etc/group`);
/// the spec itself points at `rootfs` relative to the bundle.
pub fn build_spec(
    image: &ImageConfiguration,
    opts: &RunOptions,
    rootfs: &Path,
) -> Result<Spec, BundleError> {
    let config = image.config().as_ref();

    let args = command_line(
        config.and_then(|c| c.entrypoint().as_deref()),
        config.and_then(|c| c.cmd().as_deref()),
        opts,
    )?;
    for arg in &args {
        check_nul("argument", arg)?;
    }

    let user_spec = opts
        .user
        .as_deref()
        .filter(|u| !u.is_empty())
        .or_else(|| config.and_then(|c| c.user().as_deref()))
        .unwrap_or("");
    let user = resolve_user(rootfs, user_spec)?;

    let hostname = hostname(opts)?;
    let env = environment(
        config.and_then(|c| c.env().as_deref()).unwrap_or(&[]),
        opts,
        hostname.as_deref(),
        &user.home,
    )?;
    let cwd = working_dir(
        opts.workdir
            .as_deref()
            .filter(|w| !w.is_empty())
            .or_else(|| config.and_then(|c| c.working_dir().as_deref())),
    )?;

    // Docker: root gets the set as bounding, effective and permitted;
    // anyone else only as bounding, so execve starts them with nothing, as
    // for any unprivileged process. Never inheritable or ambient.
    // (The builders of oci-spec's Spec, Process, Linux, Root and
    // LinuxCapabilities start from those types' non-empty `Default`s, so
    // every field that must be empty is cleared explicitly.)
    let caps: HashSet<Capability> = DEFAULT_CAPABILITIES.into_iter().collect();
    let mut capabilities = LinuxCapabilitiesBuilder::default().build()?;
    capabilities.set_bounding(Some(caps.clone()));
    let root_caps = (user.uid == 0).then_some(caps);
    capabilities.set_effective(root_caps.clone());
    capabilities.set_permitted(root_caps);
    capabilities.set_inheritable(None);
    capabilities.set_ambient(None);

    let mut process_user = UserBuilder::default().uid(user.uid).gid(user.gid);
    if !user.additional_gids.is_empty() {
        process_user = process_user.additional_gids(user.additional_gids.clone());
    }

    let process = ProcessBuilder::default()
        .terminal(opts.tty)
        .user(process_user.build()?)
        .args(args)
        .env(env)
        .cwd(cwd)
        .capabilities(capabilities)
        .rlimits(vec![nofile_rlimit(current_nofile_hard())?])
        .no_new_privileges(true)
        .build()?;

    let mut mounts = default_mounts()?;
    mounts.extend(opts.mounts.iter().cloned());

    let mut namespaces: Vec<LinuxNamespace> = Vec::new();
    for typ in [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Network,
        LinuxNamespaceType::Cgroup,
    ] {
        if typ == LinuxNamespaceType::Network && opts.network == NetworkMode::Host {
            continue;
        }
        let mut ns = LinuxNamespaceBuilder::default().typ(typ);
        if typ == LinuxNamespaceType::Network
            && let Some(path) = &opts.network_namespace
        {
            ns = ns.path(path.clone());
        }
        namespaces.push(ns.build()?);
    }

    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .devices(default_devices()?)
        .resources(resources(opts)?)
        .masked_paths(MASKED_PATHS.map(String::from).to_vec())
        .readonly_paths(READONLY_PATHS.map(String::from).to_vec())
        .seccomp(default_seccomp()?);
    if !opts.cgroups_path.is_empty() {
        linux = linux.cgroups_path(PathBuf::from(&opts.cgroups_path));
    }

    let mut spec = SpecBuilder::default()
        .version(oci_spec::runtime::VERSION)
        .root(
            RootBuilder::default()
                .path("rootfs")
                .readonly(opts.read_only)
                .build()?,
        )
        .process(process)
        .mounts(mounts)
        .linux(linux.build()?)
        .build()?;
    spec.set_hostname(hostname);
    spec.set_annotations(None);
    Ok(spec)
}

/// Docker's merge of Entrypoint and Cmd: a user entrypoint replaces the
/// image's and drops the image's Cmd; user arguments replace the image's
/// Cmd; the command line is entrypoint followed by cmd.
pub fn command_line(
    image_entrypoint: Option<&[String]>,
    image_cmd: Option<&[String]>,
    opts: &RunOptions,
) -> Result<Vec<String>, BundleError> {
    let user_cmd = opts.cmd.as_deref().filter(|c| !c.is_empty());
    let (entrypoint, cmd): (&[String], &[String]) = match opts.entrypoint.as_deref() {
        Some(entrypoint) => (entrypoint, user_cmd.unwrap_or(&[])),
        None => (
            image_entrypoint.unwrap_or(&[]),
            user_cmd.or(image_cmd).unwrap_or(&[]),
        ),
    };
    let args: Vec<String> = entrypoint.iter().chain(cmd).cloned().collect();
    // An empty first word cannot be executed: the same as nothing.
    if args.first().is_none_or(|a| a.is_empty()) {
        return Err(BundleError::NoCommand);
    }
    Ok(args)
}

/// The hostname: `-h`, else the host's for `--network host`, else the
/// container id's first 12 characters; `None` when there is none of these.
pub fn hostname(opts: &RunOptions) -> Result<Option<String>, BundleError> {
    let name = match opts.hostname.as_deref().filter(|h| !h.is_empty()) {
        Some(h) => h.to_string(),
        None if opts.network == NetworkMode::Host => nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default(),
        None => opts.container_id.chars().take(12).collect(),
    };
    if name.is_empty() {
        return Ok(None);
    }
    if name.len() > MAX_HOSTNAME {
        return Err(BundleError::InvalidHostname(name, "longer than 64 bytes"));
    }
    if name
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '/')
    {
        return Err(BundleError::InvalidHostname(
            name,
            "contains white space, a control character or '/'",
        ));
    }
    Ok(Some(name))
}

/// Docker's environment: `PATH`, `HOSTNAME` and (with `-t`) `TERM=xterm`
/// first, overridden by the image's Env, overridden by the user's; a bare
/// `KEY` from the user removes `KEY`. `HOME` from passwd when still unset
/// (runc does that at exec; writing it here keeps the built-in runtime
/// simple and the spec complete).
fn environment(
    image_env: &[String],
    opts: &RunOptions,
    hostname: Option<&str>,
    home: &str,
) -> Result<Vec<String>, BundleError> {
    let mut env: Vec<String> = vec![format!("PATH={DEFAULT_PATH}")];
    if let Some(hostname) = hostname {
        env.push(format!("HOSTNAME={hostname}"));
    }
    if opts.tty {
        env.push("TERM=xterm".to_string());
    }
    for entry in image_env.iter().chain(&opts.env) {
        check_nul("environment variable", entry)?;
        let key = entry.split_once('=').map_or(entry.as_str(), |(k, _)| k);
        parse::check_env_key(key).map_err(|reason| BundleError::InvalidEnv {
            entry: entry.clone(),
            reason,
        })?;
        let position = env
            .iter()
            .position(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key);
        match (entry.contains('='), position) {
            (true, Some(i)) => env[i] = entry.clone(),
            (true, None) => env.push(entry.clone()),
            (false, Some(i)) => {
                env.remove(i);
            }
            (false, None) => {}
        }
    }
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={home}"));
    }
    Ok(env)
}

/// The working directory, cleaned lexically; it must be absolute.
fn working_dir(dir: Option<&str>) -> Result<PathBuf, BundleError> {
    let Some(dir) = dir.filter(|d| !d.is_empty()) else {
        return Ok(PathBuf::from("/"));
    };
    check_nul("working directory", dir)?;
    if !dir.starts_with('/') {
        return Err(BundleError::InvalidWorkdir(dir.to_string()));
    }
    let mut clean = PathBuf::from("/");
    for component in Path::new(dir).components() {
        match component {
            Component::Normal(part) => clean.push(part),
            Component::ParentDir => {
                clean.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Ok(clean)
}

/// cgroup resources with docker's checks and defaults.
fn resources(opts: &RunOptions) -> Result<oci_spec::runtime::LinuxResources, BundleError> {
    let invalid =
        |option: &'static str, reason: String| BundleError::InvalidResource { option, reason };
    let mut resources = LinuxResourcesBuilder::default().devices(default_device_cgroup()?);

    let memory = opts.memory.filter(|m| *m != 0);
    let swap = opts.memory_swap.filter(|s| *s != 0);
    if let Some(memory) = memory {
        if memory < 0 {
            return Err(invalid("--memory", format!("{memory} is negative")));
        }
        if memory < MIN_MEMORY {
            return Err(invalid(
                "--memory",
                format!("{memory} bytes is below the minimum of 6MB"),
            ));
        }
    }
    match (memory, swap) {
        (None, Some(_)) => {
            return Err(invalid(
                "--memory-swap",
                "set the memory limit (--memory) too when using a memory-swap limit".into(),
            ));
        }
        (Some(memory), Some(swap)) if swap != -1 && swap < memory => {
            return Err(invalid(
                "--memory-swap",
                format!("{swap} is below the memory limit {memory}; it counts memory plus swap"),
            ));
        }
        (Some(_), Some(swap)) if swap < -1 => {
            return Err(invalid("--memory-swap", format!("{swap} is negative")));
        }
        _ => {}
    }
    if let Some(memory) = memory {
        // Docker: with only -m, memory plus swap is twice the memory.
        let swap = swap.unwrap_or(memory.saturating_mul(2));
        resources = resources.memory(
            LinuxMemoryBuilder::default()
                .limit(memory)
                .swap(swap)
                .build()?,
        );
    }

    let mut cpu = LinuxCpuBuilder::default();
    let mut cpu_set = false;
    if let Some(cpus) = opts.cpus {
        let available = std::thread::available_parallelism().map_or(1, |n| n.get());
        if !cpus.is_finite() || cpus < 0.01 {
            return Err(invalid("--cpus", format!("{cpus}: the minimum is 0.01")));
        }
        if cpus > available as f64 {
            return Err(invalid(
                "--cpus",
                format!(
                    "{cpus}: range of CPUs is from 0.01 to {available}.00, as there are only {available} CPUs available"
                ),
            ));
        }
        let quota = (cpus * CPU_PERIOD as f64).round() as i64;
        cpu = cpu.quota(quota).period(CPU_PERIOD);
        cpu_set = true;
    }
    if let Some(shares) = opts.cpu_shares.filter(|s| *s != 0) {
        cpu = cpu.shares(shares.clamp(MIN_CPU_SHARES, MAX_CPU_SHARES));
        cpu_set = true;
    }
    if cpu_set {
        resources = resources.cpu(cpu.build()?);
    }

    if let Some(limit) = opts.pids_limit.filter(|l| *l > 0) {
        resources = resources.pids(LinuxPidsBuilder::default().limit(limit).build()?);
    }
    Ok(resources.build()?)
}

fn check_nul(what: &'static str, value: &str) -> Result<(), BundleError> {
    if value.contains('\0') {
        return Err(BundleError::NulByte {
            what,
            value: value.replace('\0', "\\0"),
        });
    }
    Ok(())
}

/// Writes `spec` as `dir/config.json` atomically: a private temporary file
/// in `dir` renamed over the target, so a reader sees the old file or the
/// new one, never half. Not fsynced: the daemon writes the bundle anew at
/// every start, so it never needs to survive a power cut, and two fsyncs
/// per start cost more than the rest of a container's start here.
/// Mode 0600: the environment may hold secrets.
pub fn write_bundle(dir: &Path, spec: &Spec) -> Result<(), BundleError> {
    use std::os::unix::fs::OpenOptionsExt;

    let json = serde_json::to_vec_pretty(spec)?;
    let target = dir.join(CONFIG_JSON);
    let tmp = dir.join(format!(".{CONFIG_JSON}.{}.tmp", std::process::id()));
    let fail = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BundleError::Write { path, source }
    };
    let result = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(fail(&tmp))?;
        file.write_all(&json).map_err(fail(&tmp))?;
        std::fs::rename(&tmp, &target).map_err(fail(&target))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Reads `dir/config.json` back as a [`Spec`].
pub fn load_bundle(dir: &Path) -> Result<Spec, BundleError> {
    let path = dir.join(CONFIG_JSON);
    let bytes = std::fs::read(&path).map_err(|source| BundleError::Read {
        path: path.clone(),
        source,
    })?;
    Ok(serde_json::from_slice(&bytes)?)
}

#[cfg(test)]
mod tests;
