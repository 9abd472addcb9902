//! Per-container cgroups: finds the host's layout (unified v2, hybrid or
//! legacy v1, see [`detect`]), makes one cgroup per container under a shared
//! parent (`wharf`), applies the runtime spec's `linux.resources` (memory
//! and swap, cpu quota/period and shares/weight, cpuset, pids, block io),
//! places processes in it, reads OOM kills and usage, and removes it again.
//!
//! Why hand-written rather than a crate: the cgroup crates available
//! (cgroups-rs, youki's libcgroups) either cover only one version or pull
//! in systemd/dbus and far more than the handful of files wharf writes; the
//! file formats are small and stable, and the seam below keeps them
//! testable.
//!
//! Layering: the container layer (through the runtime's `before_start`
//! hook) calls [`Manager`]; the manager turns resources into writes with
//! `v1` or `v2` and performs them through [`CgroupFs`] (the real one is
//! [`HostFs`]; tests pass a temp-dir tree). Nothing here knows about images,
//! bundles or the runtime.

mod detect;
mod fs;
mod v1;
mod v2;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::unistd::Pid;
use oci_spec::runtime::LinuxResources;

pub use detect::{Hierarchy, HostMounts, MountSource, detect, detect_with};
pub use fs::{CgroupFs, HostFs};

/// The parent cgroup every container's cgroup is made under.
pub const DEFAULT_PARENT: &str = "wharf";
/// Where the cgroup hierarchies are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// How long [`Manager::destroy`] waits for killed processes to leave.
const DESTROY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot tell the cgroup layout at {path}: {detail}")]
    Detect { path: PathBuf, detail: String },
    #[error("invalid cgroup name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("invalid resource {setting}: {reason}")]
    InvalidResource { setting: String, reason: String },
    #[error("resource {setting} is not supported on this host ({detail})")]
    Unsupported { setting: String, detail: String },
    #[error("cgroup {path} already exists")]
    AlreadyExists { path: PathBuf },
    #[error("cannot create cgroup {path}: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the kernel refused memory limit {value} in {path}: {source}")]
    MemoryLimit {
        path: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {value:?} to {path}: {source}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("unexpected content in {path}: {detail}")]
    Parse { path: PathBuf, detail: String },
    #[error("cgroup {path} still has processes {pids:?} after they were killed")]
    Busy { path: PathBuf, pids: Vec<i32> },
    #[error("cannot remove cgroup {path}: {source}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Usage figures of one container's cgroup; `None` where the controller is
/// not there.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Bytes of memory charged to the cgroup now.
    pub memory_usage: Option<u64>,
    /// The memory limit in bytes (`None` when unlimited).
    pub memory_limit: Option<u64>,
    /// CPU time used, in nanoseconds.
    pub cpu_usage_ns: Option<u64>,
    /// Number of processes (tasks) in the cgroup.
    pub pids_current: Option<u64>,
    /// Every `key value` line of `memory.stat` (v1: `cache`, `rss`,
    /// `total_inactive_file`, ...; v2: `anon`, `file`, `inactive_file`,
    /// ...), what docker reports as `memory_stats.stats`.
    pub memory_stat: BTreeMap<String, u64>,
    /// Bytes read and written per device and operation: v1's
    /// `io_service_bytes_recursive` lines (ops `Read`, `Write`, `Sync`,
    /// ... as the kernel names them), v2's `io.stat` `rbytes`/`wbytes` as
    /// ops `read`/`write` (docker's naming for each).
    pub blkio: Vec<BlkioEntry>,
}

/// One device's bytes for one operation (docker's `blkio_stats` entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlkioEntry {
    pub major: u64,
    pub minor: u64,
    pub op: String,
    pub value: u64,
}

/// One control-file write a resource turns into.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Write {
    /// The controller whose directory holds the file (v1 mount name; on v2
    /// the controller that must be enabled for the file to exist).
    controller: &'static str,
    file: String,
    value: String,
    /// Tried when `file` does not exist (e.g. `blkio.bfq.weight` when the
    /// kernel has no `blkio.weight`): another file and its value.
    fallback: Option<(String, String)>,
    /// When neither file exists: skip with a warning (`true`, for settings
    /// docker also drops on hosts without them, like swap accounting) or
    /// fail with [`Error::Unsupported`].
    optional: bool,
}

impl Write {
    fn new(controller: &'static str, file: &str, value: impl ToString) -> Self {
        Write {
            controller,
            file: file.to_string(),
            value: value.to_string(),
            fallback: None,
            optional: false,
        }
    }

    fn or_file(mut self, file: &str, value: impl ToString) -> Self {
        self.fallback = Some((file.to_string(), value.to_string()));
        self
    }

    fn optional(mut self) -> Self {
        self.optional = true;
        self
    }

    /// Memory limits get their own error, naming the value and the file.
    fn is_memory_limit(&self) -> bool {
        matches!(
            self.file.as_str(),
            "memory.limit_in_bytes"
                | "memory.memsw.limit_in_bytes"
                | "memory.max"
                | "memory.swap.max"
        )
    }
}

/// Which layout one container's cgroup has.
#[derive(Debug, Clone)]
enum Layout {
    /// v1: controller name -> the container's directory in that controller's
    /// hierarchy (co-mounted controllers share a directory).
    V1(BTreeMap<String, PathBuf>),
    /// v2: the container's one directory.
    V2(PathBuf),
}

/// The cgroup of one container.
pub struct Manager {
    fs: Arc<dyn CgroupFs>,
    layout: Layout,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

impl Manager {
    /// Makes the cgroup `<parent>/<id>` (in every needed v1 controller, or
    /// once on v2), making `<parent>` too when missing, and applies
    /// `resources`. On any error, the directories this call made for the
    /// container are removed again (the shared parent stays).
    pub fn create(
        fs: Arc<dyn CgroupFs>,
        hierarchy: &Hierarchy,
        parent: &str,
        id: &str,
        resources: &LinuxResources,
    ) -> Result<Manager> {
        check_name(parent)?;
        check_name(id)?;
        match hierarchy {
            Hierarchy::Unified { root } => {
                let writes = v2::plan(resources)?;
                let dir = v2::create(fs.as_ref(), root, parent, id, &writes)?;
                let manager = Manager {
                    fs,
                    layout: Layout::V2(dir),
                };
                manager.apply_or_undo(&writes)
            }
            Hierarchy::Hybrid { controllers, .. } | Hierarchy::Legacy { controllers } => {
                let writes = v1::plan(resources)?;
                let dirs = v1::create(fs.as_ref(), controllers, parent, id, &writes)?;
                let manager = Manager {
                    fs,
                    layout: Layout::V1(dirs),
                };
                manager.apply_or_undo(&writes)
            }
        }
    }

    /// The manager of a cgroup made earlier (by [`Manager::create`], maybe
    /// in another process), for `stats`, OOM checks or removal. Makes
    /// nothing; controllers whose directory is missing are left out.
    pub fn open(
        fs: Arc<dyn CgroupFs>,
        hierarchy: &Hierarchy,
        parent: &str,
        id: &str,
    ) -> Result<Manager> {
        check_name(parent)?;
        check_name(id)?;
        let layout = match hierarchy {
            Hierarchy::Unified { root } => Layout::V2(root.join(parent).join(id)),
            Hierarchy::Hybrid { controllers, .. } | Hierarchy::Legacy { controllers } => {
                Layout::V1(
                    controllers
                        .iter()
                        .filter(|(name, _)| v1::CONTROLLERS.contains(&name.as_str()))
                        .map(|(name, mount)| (name.clone(), mount.join(parent).join(id)))
                        .filter(|(_, dir)| fs.exists(dir))
                        .collect(),
                )
            }
        };
        Ok(Manager { fs, layout })
    }

    /// The container's cgroup directories, each once.
    pub fn dirs(&self) -> Vec<PathBuf> {
        match &self.layout {
            Layout::V2(dir) => vec![dir.clone()],
            Layout::V1(dirs) => {
                let mut out: Vec<PathBuf> = dirs.values().cloned().collect();
                out.sort();
                out.dedup();
                out
            }
        }
    }

    /// The container's directory in one v1 controller, or the v2 directory.
    pub fn dir(&self, controller: &str) -> Option<&Path> {
        match &self.layout {
            Layout::V2(dir) => Some(dir),
            Layout::V1(dirs) => dirs.get(controller).map(PathBuf::as_path),
        }
    }

    /// Moves process `pid` (and so its future children) into the cgroup,
    /// in every controller.
    pub fn add_process(&self, pid: Pid) -> Result<()> {
        let value = pid.as_raw().to_string();
        for dir in self.dirs() {
            let path = dir.join("cgroup.procs");
            self.fs
                .write(&path, &value)
                .map_err(|source| Error::Write {
                    path,
                    value: value.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    /// Whether the kernel's OOM killer killed a process of this cgroup
    /// (v1: `oom_kill` in `memory.oom_control`, v2: `oom_kill` in
    /// `memory.events`). `false` when there is no memory controller.
    pub fn oom_killed(&self) -> Result<bool> {
        let path = match &self.layout {
            Layout::V1(dirs) => match dirs.get("memory") {
                Some(dir) => dir.join("memory.oom_control"),
                None => return Ok(false),
            },
            Layout::V2(dir) => dir.join("memory.events"),
        };
        if !self.fs.exists(&path) {
            return Ok(false);
        }
        let text = self.read(&path)?;
        Ok(keyed(&text, "oom_kill").is_some_and(|n| n > 0))
    }

    /// Current memory, cpu, pids and block-io usage (what `stats` shows).
    pub fn stats(&self) -> Result<Stats> {
        match &self.layout {
            Layout::V1(dirs) => v1::stats(self, dirs),
            Layout::V2(dir) => v2::stats(self, dir),
        }
    }

    /// Kills every process left in the cgroup (v2 `cgroup.kill` when the
    /// kernel has it, else SIGKILL to each pid in `cgroup.procs`), waits
    /// until it is empty and removes its directories. Idempotent: a cgroup
    /// already gone is fine. The shared parent stays.
    pub fn destroy(&self) -> Result<()> {
        let dirs = self.dirs();
        let deadline = Instant::now() + DESTROY_TIMEOUT;
        loop {
            let mut members = Vec::new();
            for dir in &dirs {
                members.extend(self.members(dir)?);
            }
            members.sort_unstable();
            members.dedup();
            if members.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                return Err(Error::Busy {
                    path: dirs.first().cloned().unwrap_or_default(),
                    pids: members,
                });
            }
            let kill_file = match &self.layout {
                Layout::V2(dir) => Some(dir.join("cgroup.kill")),
                Layout::V1(_) => None,
            };
            match kill_file {
                Some(path) if self.fs.exists(&path) => {
                    self.fs.write(&path, "1").map_err(|source| Error::Write {
                        path,
                        value: "1".into(),
                        source,
                    })?;
                }
                _ => {
                    // A process may exit (ESRCH) between the read and the
                    // kill; it is gone either way. Other errors show up as
                    // the cgroup staying busy.
                    for pid in &members {
                        if let Err(e) = self.fs.kill(*pid) {
                            tracing::debug!(pid, error = %e, "kill of cgroup member failed");
                        }
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        for dir in dirs.iter().rev() {
            remove_dir(self.fs.as_ref(), dir, deadline)?;
        }
        Ok(())
    }

    /// Pids in `dir/cgroup.procs`; none when the directory is gone.
    fn members(&self, dir: &Path) -> Result<Vec<i32>> {
        let path = dir.join("cgroup.procs");
        let text = match self.fs.read(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(Error::Read { path, source }),
        };
        text.split_whitespace()
            .map(|p| {
                p.parse::<i32>().map_err(|_| Error::Parse {
                    path: path.clone(),
                    detail: format!("{p:?} is not a pid"),
                })
            })
            .collect()
    }

    fn read(&self, path: &Path) -> Result<String> {
        self.fs.read(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })
    }

    /// A single number from a file; `None` when the file is missing or
    /// says `max`.
    fn read_number(&self, path: &Path) -> Result<Option<u64>> {
        if !self.fs.exists(path) {
            return Ok(None);
        }
        let text = self.read(path)?;
        let text = text.trim();
        if text == "max" {
            return Ok(None);
        }
        text.parse::<u64>().map(Some).map_err(|_| Error::Parse {
            path: path.to_path_buf(),
            detail: format!("{text:?} is not a number"),
        })
    }

    /// A `key value` line's number from a flat-keyed file (memory.events,
    /// cpu.stat, memory.oom_control); `None` when the file is missing.
    fn read_keyed(&self, path: &Path, key: &str) -> Result<Option<u64>> {
        if !self.fs.exists(path) {
            return Ok(None);
        }
        Ok(keyed(&self.read(path)?, key))
    }

    /// Every `key value` line of a flat-keyed file whose value is a
    /// number; empty when the file is missing.
    fn read_flat(&self, path: &Path) -> Result<BTreeMap<String, u64>> {
        if !self.fs.exists(path) {
            return Ok(BTreeMap::new());
        }
        Ok(flat(&self.read(path)?))
    }

    /// The content of a file, `None` when it is missing.
    fn read_optional(&self, path: &Path) -> Result<Option<String>> {
        match self.fs.read(path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Performs `writes`; on error removes the container's directories.
    fn apply_or_undo(self, writes: &[Write]) -> Result<Manager> {
        match self.apply(writes) {
            Ok(()) => Ok(self),
            Err(e) => {
                for dir in self.dirs().iter().rev() {
                    if let Err(undo) = self.fs.remove_dir(dir) {
                        tracing::warn!(path = %dir.display(), error = %undo, "cannot remove cgroup after a failed create");
                    }
                }
                Err(e)
            }
        }
    }

    fn apply(&self, writes: &[Write]) -> Result<()> {
        for w in writes {
            let Some(dir) = self.dir(w.controller) else {
                return Err(Error::Unsupported {
                    setting: w.file.clone(),
                    detail: format!("no {} controller", w.controller),
                });
            };
            let mut target = (dir.join(&w.file), w.value.as_str());
            if !self.fs.exists(&target.0) {
                match &w.fallback {
                    Some((file, value)) if self.fs.exists(&dir.join(file)) => {
                        target = (dir.join(file), value.as_str());
                    }
                    _ if w.optional => {
                        tracing::warn!(file = %target.0.display(), value = %w.value, "the kernel lacks this cgroup file; setting dropped");
                        continue;
                    }
                    _ => {
                        return Err(Error::Unsupported {
                            setting: w.file.clone(),
                            detail: format!("{} does not exist", target.0.display()),
                        });
                    }
                }
            }
            let (path, value) = target;
            if let Err(source) = self.fs.write(&path, value) {
                let value = value.to_string();
                return Err(if w.is_memory_limit() {
                    Error::MemoryLimit {
                        path,
                        value,
                        source,
                    }
                } else {
                    Error::Write {
                        path,
                        value,
                        source,
                    }
                });
            }
        }
        Ok(())
    }
}

/// rmdir that tolerates a directory already gone and retries EBUSY (the
/// kernel may still be tearing down exited tasks) until `deadline`.
fn remove_dir(fs: &dyn CgroupFs, dir: &Path, deadline: Instant) -> Result<()> {
    loop {
        match fs.remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(source) => {
                return Err(Error::Remove {
                    path: dir.to_path_buf(),
                    source,
                });
            }
        }
    }
}

/// Makes `dir` (one level). `Ok(true)` when made, `Ok(false)` when it
/// existed already.
fn ensure_dir(fs: &dyn CgroupFs, dir: &Path) -> Result<bool> {
    match fs.create_dir(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(source) => Err(Error::Create {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// Makes the container's own directory, which must not exist yet.
fn create_new_dir(fs: &dyn CgroupFs, dir: &Path) -> Result<()> {
    match fs.create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(Error::AlreadyExists {
            path: dir.to_path_buf(),
        }),
        Err(source) => Err(Error::Create {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// The number after `key` in a flat-keyed file.
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

/// Every `key value` line whose value is a number (others are skipped).
fn flat(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (k, v) = line.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// `MAJOR:MINOR` of a device.
fn device(text: &str) -> Option<(u64, u64)> {
    let (major, minor) = text.split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// A cgroup directory name: one path component, nothing that walks out.
fn check_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "empty"
    } else if name == "." || name == ".." {
        "a relative path component"
    } else if name.contains('/') || name.contains('\0') {
        "contains '/' or NUL"
    } else if name.len() > 255 {
        "longer than 255 bytes"
    } else {
        return Ok(());
    };
    Err(Error::InvalidName {
        name: name.to_string(),
        reason,
    })
}

/// runc's conversion of cgroup v1 cpu shares (2..262144) to a v2 cpu weight
/// (1..10000): `1 + ((shares - 2) * 9999) / 262142`.
pub fn shares_to_weight(shares: u64) -> u64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

/// runc's conversion of a v1 blkio weight (10..1000) to a v2 io weight
/// (1..10000): `1 + ((weight - 10) * 9999) / 990`.
pub fn blkio_weight_to_io_weight(weight: u16) -> u64 {
    let weight = u64::from(weight.clamp(10, 1000));
    1 + ((weight - 10) * 9999) / 990
}

/// The memory limit and memory+swap limit (the OCI `swap` is memory plus
/// swap, as in v1's `memsw`), checked the way runc checks them: each is a
/// positive byte count or -1 (unlimited), and a swap limit needs a memory
/// limit no larger than it.
fn memory_limits(resources: &LinuxResources) -> Result<(Option<i64>, Option<i64>)> {
    let Some(memory) = resources.memory() else {
        return Ok((None, None));
    };
    let invalid = |setting: &str, reason: String| Error::InvalidResource {
        setting: setting.to_string(),
        reason,
    };
    let limit = memory.limit();
    if let Some(l) = limit
        && l != -1
        && l <= 0
    {
        return Err(invalid(
            "memory.limit",
            format!("{l} is not a positive number of bytes or -1"),
        ));
    }
    let swap = memory.swap();
    if let Some(s) = swap
        && s != -1
    {
        if s <= 0 {
            return Err(invalid(
                "memory.swap",
                format!("{s} is not a positive number of bytes or -1"),
            ));
        }
        match limit {
            Some(l) if l > 0 && s >= l => {}
            Some(l) if l > 0 => {
                return Err(invalid(
                    "memory.swap",
                    format!("memory+swap limit {s} is below the memory limit {l}"),
                ));
            }
            _ => {
                return Err(invalid(
                    "memory.swap",
                    format!("a memory+swap limit ({s}) needs a memory limit"),
                ));
            }
        }
    }
    Ok((limit, swap))
}

/// A block-io weight must lie in 10..=1000 (the v1 range, which the spec
/// uses).
fn check_blkio_weight(setting: &str, weight: u16) -> Result<()> {
    if (10..=1000).contains(&weight) {
        Ok(())
    } else {
        Err(Error::InvalidResource {
            setting: setting.to_string(),
            reason: format!("{weight} is outside 10..=1000"),
        })
    }
}

/// Settings wharf does not apply: logged, not refused (docker's default
/// device rules arrive in every spec, and device access is already limited
/// by the container's own /dev).
fn note_unapplied(resources: &LinuxResources) {
    if resources.devices().as_ref().is_some_and(|d| !d.is_empty()) {
        tracing::debug!("device cgroup rules are not applied");
    }
    if resources
        .hugepage_limits()
        .as_ref()
        .is_some_and(|h| !h.is_empty())
    {
        tracing::warn!("hugepage limits are not applied");
    }
    if resources.network().is_some() {
        tracing::warn!("network class ids and priorities are not applied");
    }
    if resources.rdma().as_ref().is_some_and(|r| !r.is_empty()) {
        tracing::warn!("rdma limits are not applied");
    }
}
