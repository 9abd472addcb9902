//! A container's root filesystem: an overlayfs mount with the image's
//! unpacked layers read-only below and the container's writable layer
//! (`upper/`, with overlay's `work/`) on top, mounted at `rootfs/`.
//!
//! Lower layers are passed one by one with the new mount API
//! (`fsopen`/`fsconfig("lowerdir+")`, Linux 6.8+), so an image of any
//! number of layers mounts: the classic `mount(2)` takes all options in one
//! page (4 KiB), which a hundred layer paths overflow. Older kernels fall
//! back to `mount(2)` with the store's short layer links (`<store>/l/<id>`).
//! Hand-written because no crate wraps overlay mounting; it is a few
//! syscalls through rustix.
//!
//! Called by `containers`; calls rustix only.

use std::io;
use std::path::{Path, PathBuf};

use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MountFlags, MoveMountFlags, UnmountFlags,
};

/// The directories of one container's rootfs.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Layer dirs, topmost first (overlay's order).
    pub lower: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
    pub target: PathBuf,
    /// overlay's `volatile`: no syncs of the upper layer (not at unmount
    /// either). For `--rm` containers, whose writable layer is thrown away;
    /// after a crash such an upper dir is unusable, which is fine for them.
    pub volatile: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("mounting the overlay rootfs at {target}: {source}")]
pub struct MountError {
    pub target: PathBuf,
    #[source]
    pub source: io::Error,
}

/// Whether /proc/self/mountinfo lists `path` as a mount point.
pub fn is_mounted(path: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let wanted = path.to_string_lossy();
    text.lines().any(|line| {
        line.split(' ')
            .nth(4)
            .is_some_and(|mp| unescape(mp) == wanted)
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mounts the overlay (nothing happens when it is already mounted).
/// `upper`, `work` and `target` must exist.
pub fn mount(layout: &Layout) -> Result<(), MountError> {
    if is_mounted(&layout.target) {
        return Ok(());
    }
    let err = |source| MountError {
        target: layout.target.clone(),
        source,
    };
    if layout.lower.is_empty() {
        return Err(err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "an overlay needs at least one lower layer",
        )));
    }
    match mount_new_api(layout) {
        Ok(()) => Ok(()),
        // ENOSYS: no fsopen; EINVAL: no `lowerdir+` (before 6.8).
        Err(e)
            if e.raw_os_error() == Some(rustix::io::Errno::NOSYS.raw_os_error())
                || e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) =>
        {
            mount_legacy(layout).map_err(err)
        }
        Err(e) => Err(err(e)),
    }
}

fn mount_new_api(layout: &Layout) -> io::Result<()> {
    let fs = rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)?;
    for dir in &layout.lower {
        rustix::mount::fsconfig_set_string(&fs, "lowerdir+", dir.as_path())?;
    }
    rustix::mount::fsconfig_set_string(&fs, "upperdir", layout.upper.as_path())?;
    rustix::mount::fsconfig_set_string(&fs, "workdir", layout.work.as_path())?;
    // Like docker's overlay2: index off (layers are shared by many mounts).
    rustix::mount::fsconfig_set_string(&fs, "index", "off")?;
    if layout.volatile {
        rustix::mount::fsconfig_set_flag(&fs, "volatile")?;
    }
    rustix::mount::fsconfig_create(&fs)?;
    let mnt = rustix::mount::fsmount(
        &fs,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::MOUNT_ATTR_NODEV,
    )?;
    rustix::mount::move_mount(
        &mnt,
        "",
        rustix::fs::CWD,
        layout.target.as_path(),
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )?;
    Ok(())
}

fn mount_legacy(layout: &Layout) -> io::Result<()> {
    let lower: Vec<String> = layout
        .lower
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let data = format!(
        "lowerdir={},upperdir={},workdir={},index=off{}",
        lower.join(":"),
        layout.upper.display(),
        layout.work.display(),
        if layout.volatile { ",volatile" } else { "" }
    );
    if data.len() >= 4096 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} layers do not fit in one mount(2) call on this kernel (Linux 6.8+ has no limit)",
                layout.lower.len()
            ),
        ));
    }
    let data = std::ffi::CString::new(data)?;
    rustix::mount::mount(
        "overlay",
        layout.target.as_path(),
        "overlay",
        MountFlags::NODEV,
        data.as_c_str(),
    )?;
    Ok(())
}

/// Unmounts `target` if it is mounted (lazily when busy).
pub fn unmount(target: &Path) -> io::Result<()> {
    if !is_mounted(target) {
        return Ok(());
    }
    match rustix::mount::unmount(target, UnmountFlags::empty()) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::BUSY) => {
            rustix::mount::unmount(target, UnmountFlags::DETACH).map_err(Into::into)
        }
        Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert_eq!(unescape(r"/x\134y"), r"/x\y");
    }
}
