//! The seam between the cgroup managers and the kernel: every file the
//! managers read or write, every directory they make or remove, and the one
//! call that is not a file operation (signalling a member process) go
//! through [`CgroupFs`]. [`HostFs`] is the real implementation over
//! `std::fs` and nix; tests pass their own (a temp-dir tree laid out like
//! cgroupfs) explicitly, so nothing here switches on `cfg!(test)`.
//!
//! Called by `v1`, `v2` and the `Manager`; calls std and nix only.

use std::io;
use std::path::Path;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The calls a cgroup manager makes. Kept narrow on purpose: only what
/// the managers need, so a test double stays small.
pub trait CgroupFs: Send + Sync {
    /// The whole content of a control file.
    fn read(&self, path: &Path) -> io::Result<String>;
    /// One write of `value` to a control file (cgroupfs takes one value
    /// per write(2); the file must already exist, as kernel files do).
    fn write(&self, path: &Path, value: &str) -> io::Result<()>;
    /// Whether a control file or directory exists (controllers differ in
    /// the files they offer, e.g. `memory.memsw.*` needs swap accounting).
    fn exists(&self, path: &Path) -> bool;
    /// mkdir of one level; an existing directory is `AlreadyExists`.
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    /// rmdir of one (empty) cgroup directory.
    fn remove_dir(&self, path: &Path) -> io::Result<()>;
    /// SIGKILL one process that is a member of the cgroup.
    fn kill(&self, pid: i32) -> io::Result<()>;
}

/// The host's cgroupfs.
#[derive(Debug, Default, Clone, Copy)]
pub struct HostFs;

impl CgroupFs for HostFs {
    fn read(&self, path: &Path) -> io::Result<String> {
        std::fs::read_to_string(path)
    }

    fn write(&self, path: &Path, value: &str) -> io::Result<()> {
        // Truncate (as runc does) but never create: kernel control files
        // exist already, and a missing one must fail rather than become a
        // regular file.
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(path)?;
        file.write_all(value.as_bytes())
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir(path)
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir(path)
    }

    fn kill(&self, pid: i32) -> io::Result<()> {
        kill(Pid::from_raw(pid), Signal::SIGKILL).map_err(io::Error::from)
    }
}
