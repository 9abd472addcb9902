//! The container's filesystem view, built inside the child's new mount
//! namespace: the spec's mounts under the rootfs, the /dev nodes and links,
//! pivot_root into the rootfs, then masked and read-only paths.
//!
//! Called by `init` (in the cloned child, before privileges are dropped);
//! calls only nix and std. Every function returns a message naming the path
//! at fault, which the child sends back to the parent.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, symlink};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, open};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{Mode, SFlag, makedev, mknod};
use nix::sys::statfs::CGROUP2_SUPER_MAGIC;
use nix::sys::statvfs::{FsFlags, statvfs};
use nix::unistd::{Gid, Uid, chown, fchdir, pivot_root};
use oci_spec::runtime::{LinuxDeviceType, Mount, Spec};

/// The device nodes every container gets, bind-mounted from the host's
/// (works where mknod would not, e.g. in a user namespace later).
pub const DEFAULT_DEVICES: &[&str] = &["null", "zero", "full", "random", "urandom", "tty"];

type Result<T> = std::result::Result<T, String>;

fn sys(what: impl FnOnce() -> String) -> impl FnOnce(Errno) -> String {
    move |e| format!("{}: {}", what(), e.desc())
}

/// Joins `unsafe_path` to `root` resolving every symlink on the way as if
/// `root` were `/`, so a rootfs holding `proc -> /` or `../..` cannot send a
/// mount outside itself (what runc's securejoin does). Hand-written: the
/// check must follow the symlinks of the rootfs before it is our root,
/// which `cap-std` does not do for mount targets.
pub fn secure_join(root: &Path, unsafe_path: &Path) -> Result<PathBuf> {
    let mut pending: VecDeque<OsString> = unsafe_path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
        .collect();
    let mut resolved = PathBuf::new();
    let mut links = 0;
    while let Some(part) = pending.pop_front() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let candidate = resolved.join(&part);
        match fs::symlink_metadata(root.join(&candidate)) {
            Ok(md) if md.file_type().is_symlink() => {
                links += 1;
                if links > 255 {
                    return Err(format!(
                        "{}: too many levels of symbolic links",
                        unsafe_path.display()
                    ));
                }
                let target = fs::read_link(root.join(&candidate))
                    .map_err(|e| format!("{}: {e}", root.join(&candidate).display()))?;
                if target.is_absolute() {
                    resolved = PathBuf::new();
                }
                let mut next: VecDeque<OsString> = target
                    .components()
                    .filter_map(|c| match c {
                        Component::Normal(n) => Some(n.to_os_string()),
                        Component::ParentDir => Some(OsString::from("..")),
                        _ => None,
                    })
                    .collect();
                next.extend(pending);
                pending = next;
            }
            _ => resolved.push(part),
        }
    }
    Ok(root.join(resolved))
}

/// Mount options as the flags and the data string mount(2) wants.
#[derive(Debug, PartialEq)]
pub struct MountOptions {
    pub flags: MsFlags,
    pub propagation: Vec<MsFlags>,
    pub data: String,
    /// `rro` (runc's recursive read-only): every mount under a bind is
    /// made read-only too, as docker 25+ asks for `-v SRC:DST:ro`.
    pub recursive_ro: bool,
}

pub fn parse_options(options: &[String]) -> MountOptions {
    let mut out = MountOptions {
        flags: MsFlags::empty(),
        propagation: Vec::new(),
        data: String::new(),
        recursive_ro: false,
    };
    let mut data = Vec::new();
    for opt in options {
        let (set, clear) = match opt.as_str() {
            "defaults" => (MsFlags::empty(), MsFlags::empty()),
            "ro" => (MsFlags::MS_RDONLY, MsFlags::empty()),
            "rw" => (MsFlags::empty(), MsFlags::MS_RDONLY),
            "nosuid" => (MsFlags::MS_NOSUID, MsFlags::empty()),
            "suid" => (MsFlags::empty(), MsFlags::MS_NOSUID),
            "nodev" => (MsFlags::MS_NODEV, MsFlags::empty()),
            "dev" => (MsFlags::empty(), MsFlags::MS_NODEV),
            "noexec" => (MsFlags::MS_NOEXEC, MsFlags::empty()),
            "exec" => (MsFlags::empty(), MsFlags::MS_NOEXEC),
            "sync" => (MsFlags::MS_SYNCHRONOUS, MsFlags::empty()),
            "async" => (MsFlags::empty(), MsFlags::MS_SYNCHRONOUS),
            "dirsync" => (MsFlags::MS_DIRSYNC, MsFlags::empty()),
            "remount" => (MsFlags::MS_REMOUNT, MsFlags::empty()),
            "mand" => (MsFlags::MS_MANDLOCK, MsFlags::empty()),
            "nomand" => (MsFlags::empty(), MsFlags::MS_MANDLOCK),
            "atime" => (MsFlags::empty(), MsFlags::MS_NOATIME),
            "noatime" => (MsFlags::MS_NOATIME, MsFlags::empty()),
            "diratime" => (MsFlags::empty(), MsFlags::MS_NODIRATIME),
            "nodiratime" => (MsFlags::MS_NODIRATIME, MsFlags::empty()),
            "relatime" => (MsFlags::MS_RELATIME, MsFlags::empty()),
            "norelatime" => (MsFlags::empty(), MsFlags::MS_RELATIME),
            "strictatime" => (MsFlags::MS_STRICTATIME, MsFlags::empty()),
            "bind" => (MsFlags::MS_BIND, MsFlags::empty()),
            "rro" => {
                out.recursive_ro = true;
                continue;
            }
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, MsFlags::empty()),
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable"
            | "runbindable" => {
                let kind = match opt.trim_start_matches('r') {
                    "private" => MsFlags::MS_PRIVATE,
                    "shared" => MsFlags::MS_SHARED,
                    "slave" => MsFlags::MS_SLAVE,
                    _ => MsFlags::MS_UNBINDABLE,
                };
                let rec = if opt.starts_with('r') {
                    MsFlags::MS_REC
                } else {
                    MsFlags::empty()
                };
                out.propagation.push(kind | rec);
                continue;
            }
            other => {
                data.push(other.to_string());
                continue;
            }
        };
        out.flags.insert(set);
        out.flags.remove(clear);
    }
    out.data = data.join(",");
    out
}

/// The per-mount flags of the mount holding `path`, to keep across a
/// bind remount (dropping nosuid/noexec by accident would widen access).
fn locked_flags(path: &Path) -> MsFlags {
    let Ok(st) = statvfs(path) else {
        return MsFlags::empty();
    };
    let f = st.flags();
    let mut out = MsFlags::empty();
    for (fs, ms) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(fs) {
            out.insert(ms);
        }
    }
    out
}

fn mkdir_all(path: &Path) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(path)
        .map_err(|e| format!("mkdir {}: {e}", path.display()))
}

/// Creates an empty file at `path` (for a bind mount of a file onto it).
fn touch(path: &Path) -> Result<()> {
    if let Some(parent) = path.parent() {
        mkdir_all(parent)?;
    }
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(path)
            .map(drop)
            .map_err(|e| format!("create {}: {e}", path.display())),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

fn bind_remount(dest: &Path, flags: MsFlags) -> Result<()> {
    let flags = flags | locked_flags(dest) | MsFlags::MS_BIND | MsFlags::MS_REMOUNT;
    mount(None::<&str>, dest, None::<&str>, flags, None::<&str>)
        .map_err(sys(|| format!("remount {} read-only", dest.display())))
}

/// The mount points strictly below `dir` in this mount namespace.
fn mounts_below(dir: &Path) -> Result<Vec<PathBuf>> {
    let text = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(field) = line.split(' ').nth(4) else {
            continue;
        };
        let path = PathBuf::from(unescape_mountinfo(field));
        if path != dir && path.starts_with(dir) {
            out.push(path);
        }
    }
    Ok(out)
}

/// mountinfo's octal escapes (`\040` for a space) undone.
fn unescape_mountinfo(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = (b[i] == b'\\' && i + 3 < b.len())
            .then(|| &b[i + 1..i + 4])
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .and_then(|d| {
                let v = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                u8::try_from(v).ok()
            });
        if let Some(byte) = octal {
            out.push(byte);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether a failure of this mount may be ignored (the container works
/// without it, as on hosts where sysfs or cgroupfs cannot be mounted).
fn optional(typ: &str) -> bool {
    matches!(typ, "sysfs" | "mqueue" | "cgroup" | "cgroup2")
}

fn mount_one(m: &Mount, rootfs: &Path, bundle: &Path) -> Result<()> {
    let typ = m.typ().as_deref().unwrap_or("");
    let dest = secure_join(rootfs, m.destination())?;
    let opts = parse_options(m.options().as_deref().unwrap_or_default());
    let data = (!opts.data.is_empty()).then_some(opts.data.as_str());
    if typ == "cgroup" || typ == "cgroup2" {
        mount_cgroup(&dest, opts.flags);
        return Ok(());
    }
    if typ == "bind" || opts.flags.contains(MsFlags::MS_BIND) {
        let source = m
            .source()
            .as_ref()
            .ok_or_else(|| format!("bind mount {} has no source", m.destination().display()))?;
        let source = if source.is_absolute() {
            source.clone()
        } else {
            bundle.join(source)
        };
        let md = fs::metadata(&source).map_err(|e| format!("{}: {e}", source.display()))?;
        if md.is_dir() {
            mkdir_all(&dest)?;
        } else {
            touch(&dest)?;
        }
        let rec = opts.flags & MsFlags::MS_REC;
        mount(
            Some(&source),
            &dest,
            None::<&str>,
            MsFlags::MS_BIND | rec,
            None::<&str>,
        )
        .map_err(sys(|| {
            format!("bind {} on {}", source.display(), m.destination().display())
        }))?;
        let rest = opts.flags - (MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
        if !rest.is_empty() {
            bind_remount(&dest, rest)?;
        }
        if opts.recursive_ro {
            for sub in mounts_below(&dest)? {
                bind_remount(&sub, MsFlags::MS_RDONLY)?;
            }
        }
    } else {
        mkdir_all(&dest)?;
        let source = m
            .source()
            .as_ref()
            .map(|s| s.as_os_str().to_os_string())
            .unwrap_or_else(|| OsString::from(typ));
        let result = mount(Some(source.as_os_str()), &dest, Some(typ), opts.flags, data).map_err(
            sys(|| format!("mount {typ} on {}", m.destination().display())),
        );
        match result {
            Err(_) if optional(typ) => return Ok(()),
            other => other?,
        }
    }
    for p in &opts.propagation {
        mount(None::<&str>, &dest, None::<&str>, *p, None::<&str>).map_err(sys(|| {
            format!("propagation of {}", m.destination().display())
        }))?;
    }
    Ok(())
}

/// The container's cgroupfs. On a unified (v2) host a fresh cgroup2 mount,
/// which the cgroup namespace roots at the container's own cgroup. On a v1
/// or hybrid host a tmpfs holding one mount per host hierarchy (again rooted
/// by the namespace), made read-only. Best effort: a hierarchy that cannot
/// be mounted is left out.
fn mount_cgroup(dest: &Path, flags: MsFlags) {
    let _ = mkdir_all(dest);
    let ro = flags | MsFlags::MS_RDONLY;
    let unified = nix::sys::statfs::statfs("/sys/fs/cgroup")
        .map(|s| s.filesystem_type() == CGROUP2_SUPER_MAGIC)
        .unwrap_or(false);
    if unified {
        let _ = mount(Some("cgroup2"), dest, Some("cgroup2"), ro, None::<&str>);
        return;
    }
    let tmpfs_flags = flags - MsFlags::MS_RDONLY;
    if mount(
        Some("tmpfs"),
        dest,
        Some("tmpfs"),
        tmpfs_flags,
        Some("mode=755"),
    )
    .is_err()
    {
        return;
    }
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in mountinfo.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mount_point) = pre.split(' ').nth(4) else {
            continue;
        };
        let mut post = post.split(' ');
        let (Some(fstype), Some(_src), Some(superopts)) = (post.next(), post.next(), post.next())
        else {
            continue;
        };
        let Some(name) = mount_point.strip_prefix("/sys/fs/cgroup/") else {
            continue;
        };
        if name.contains('/') || name.is_empty() {
            continue;
        }
        let target = dest.join(name);
        match fstype {
            "cgroup" => {
                let data: Vec<&str> = superopts
                    .split(',')
                    .filter(|o| *o != "rw" && *o != "ro" && !o.starts_with("release_agent="))
                    .collect();
                if mkdir_all(&target).is_ok() {
                    let _ = mount(
                        Some("cgroup"),
                        &target,
                        Some("cgroup"),
                        ro,
                        Some(data.join(",").as_str()),
                    );
                }
            }
            "cgroup2" if mkdir_all(&target).is_ok() => {
                let _ = mount(Some("cgroup2"), &target, Some("cgroup2"), ro, None::<&str>);
            }
            _ => {}
        }
    }
    // The host's alias links (cpu -> cpu,cpuacct).
    if let Ok(entries) = fs::read_dir("/sys/fs/cgroup") {
        for entry in entries.flatten() {
            if let Ok(target) = fs::read_link(entry.path()) {
                let _ = symlink(target, dest.join(entry.file_name()));
            }
        }
    }
    let _ = mount(
        None::<&str>,
        dest,
        None::<&str>,
        tmpfs_flags | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        Some("mode=755"),
    );
}

/// The /dev nodes: the defaults bound from the host, the spec's extra
/// devices made with mknod, and the usual links.
fn make_devices(spec: &Spec, rootfs: &Path) -> Result<()> {
    let dev = secure_join(rootfs, Path::new("/dev"))?;
    mkdir_all(&dev)?;
    for name in DEFAULT_DEVICES {
        let host = Path::new("/dev").join(name);
        let dest = dev.join(name);
        if fs::symlink_metadata(&dest).is_ok_and(|m| m.file_type().is_symlink()) {
            fs::remove_file(&dest).map_err(|e| format!("{}: {e}", dest.display()))?;
        }
        touch(&dest)?;
        mount(
            Some(&host),
            &dest,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(sys(|| {
            format!("bind {} into the container", host.display())
        }))?;
    }
    let devices = spec.linux().as_ref().and_then(|l| l.devices().as_ref());
    for d in devices.into_iter().flatten() {
        let is_default = DEFAULT_DEVICES
            .iter()
            .any(|n| d.path() == &Path::new("/dev").join(n));
        if is_default {
            continue;
        }
        let dest = secure_join(rootfs, d.path())?;
        if let Some(parent) = dest.parent() {
            mkdir_all(parent)?;
        }
        let kind = match d.typ() {
            LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
            LinuxDeviceType::B => SFlag::S_IFBLK,
            LinuxDeviceType::P => SFlag::S_IFIFO,
            LinuxDeviceType::A => {
                return Err(format!(
                    "device {}: type \"a\" is not a node",
                    d.path().display()
                ));
            }
        };
        let mode = Mode::from_bits_truncate(d.file_mode().unwrap_or(0o666));
        let (major, minor) = (
            u64::try_from(d.major()).unwrap_or(0),
            u64::try_from(d.minor()).unwrap_or(0),
        );
        let _ = fs::remove_file(&dest);
        mknod(&dest, kind, mode, makedev(major, minor))
            .map_err(sys(|| format!("mknod {}", d.path().display())))?;
        chown(
            &dest,
            d.uid().map(Uid::from_raw),
            d.gid().map(Gid::from_raw),
        )
        .map_err(sys(|| format!("chown {}", d.path().display())))?;
    }
    let ptmx = dev.join("ptmx");
    let _ = fs::remove_file(&ptmx);
    symlink("pts/ptmx", &ptmx).map_err(|e| format!("{}: {e}", ptmx.display()))?;
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        match symlink(target, dev.join(name)) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                return Err(format!("/dev/{name}: {e}"));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Everything before pivot_root: private propagation, the rootfs as a mount
/// of its own, the spec's mounts and /dev.
pub fn prepare_rootfs(spec: &Spec, rootfs: &Path, bundle: &Path) -> Result<()> {
    let propagation = spec
        .linux()
        .as_ref()
        .and_then(|l| l.rootfs_propagation().as_deref())
        .map(|p| match p {
            "shared" | "rshared" => MsFlags::MS_SHARED,
            "slave" | "rslave" => MsFlags::MS_SLAVE,
            "unbindable" | "runbindable" => MsFlags::MS_UNBINDABLE,
            _ => MsFlags::MS_PRIVATE,
        })
        .unwrap_or(MsFlags::MS_PRIVATE);
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | propagation,
        None::<&str>,
    )
    .map_err(sys(|| "make / private".to_string()))?;
    mount(
        Some(rootfs),
        rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(sys(|| format!("bind the rootfs {}", rootfs.display())))?;
    for m in spec.mounts().iter().flatten() {
        mount_one(m, rootfs, bundle)?;
    }
    make_devices(spec, rootfs)?;
    // Like runc: a working directory the image lacks is created.
    if let Some(process) = spec.process() {
        mkdir_all(&secure_join(rootfs, process.cwd())?)?;
    }
    Ok(())
}

/// pivot_root into `rootfs` and detach the old root, the way runc does it
/// (`pivot_root(".", ".")`), so no directory is needed in a rootfs that may
/// be read-only.
pub fn pivot_into(rootfs: &Path) -> Result<()> {
    let flags = OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC;
    let old_root = open("/", flags, Mode::empty()).map_err(sys(|| "open /".to_string()))?;
    let new_root =
        open(rootfs, flags, Mode::empty()).map_err(sys(|| format!("open {}", rootfs.display())))?;
    fchdir(&new_root).map_err(sys(|| "chdir into the rootfs".to_string()))?;
    pivot_root(".", ".").map_err(sys(|| format!("pivot_root into {}", rootfs.display())))?;
    fchdir(&old_root).map_err(sys(|| "chdir to the old root".to_string()))?;
    mount(
        None::<&str>,
        ".",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(sys(|| "make the old root a slave".to_string()))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(sys(|| "detach the old root".to_string()))?;
    nix::unistd::chdir("/").map_err(sys(|| "chdir /".to_string()))
}

/// After pivot_root: hides the masked paths (a read-only tmpfs over a
/// directory, /dev/null over a file), makes the read-only paths and, when
/// asked, the root read-only. Paths that do not exist are skipped.
pub fn restrict(spec: &Spec) -> Result<()> {
    let linux = spec.linux().as_ref();
    for p in linux
        .and_then(|l| l.masked_paths().as_ref())
        .into_iter()
        .flatten()
    {
        let path = Path::new(p);
        let md = match fs::metadata(path) {
            Ok(md) => md,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("masked path {p}: {e}")),
        };
        let result = if md.is_dir() {
            mount(
                Some("tmpfs"),
                path,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None::<&str>,
            )
        } else {
            mount(
                Some("/dev/null"),
                path,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
        };
        result.map_err(sys(|| format!("mask {p}")))?;
    }
    for p in linux
        .and_then(|l| l.readonly_paths().as_ref())
        .into_iter()
        .flatten()
    {
        let path = Path::new(p);
        match fs::symlink_metadata(path) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("read-only path {p}: {e}")),
        }
        mount(
            Some(path),
            path,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(sys(|| format!("bind {p}")))?;
        bind_remount(path, MsFlags::MS_RDONLY | MsFlags::MS_REC)?;
    }
    if spec.root().as_ref().and_then(|r| r.readonly()) == Some(true) {
        bind_remount(Path::new("/"), MsFlags::MS_RDONLY)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secure_join_keeps_symlinks_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("real/sub")).unwrap();
        symlink("/", root.join("abs")).unwrap();
        symlink("../../..", root.join("real/up")).unwrap();
        symlink("/real", root.join("link")).unwrap();
        assert_eq!(
            secure_join(root, Path::new("/abs/etc")).unwrap(),
            root.join("etc")
        );
        assert_eq!(
            secure_join(root, Path::new("/real/up/x")).unwrap(),
            root.join("x")
        );
        assert_eq!(
            secure_join(root, Path::new("/../../proc")).unwrap(),
            root.join("proc")
        );
        assert_eq!(
            secure_join(root, Path::new("/link/sub")).unwrap(),
            root.join("real/sub")
        );
        symlink("loop", root.join("loop")).unwrap();
        assert!(secure_join(root, Path::new("/loop")).is_err());
    }

    #[test]
    fn options_become_flags_and_data() {
        let opts: Vec<String> = [
            "nosuid",
            "noexec",
            "ro",
            "mode=755",
            "size=65536k",
            "rprivate",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let parsed = parse_options(&opts);
        assert_eq!(
            parsed.flags,
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY
        );
        assert_eq!(parsed.data, "mode=755,size=65536k");
        assert_eq!(
            parsed.propagation,
            vec![MsFlags::MS_PRIVATE | MsFlags::MS_REC]
        );
        let rw = parse_options(&["ro".to_string(), "rw".to_string(), "rbind".to_string()]);
        assert_eq!(rw.flags, MsFlags::MS_BIND | MsFlags::MS_REC);
        assert!(!rw.recursive_ro);
        let rro = parse_options(&["rbind".to_string(), "ro".to_string(), "rro".to_string()]);
        assert!(rro.recursive_ro && rro.flags.contains(MsFlags::MS_RDONLY));
        assert_eq!(rro.data, "");
        assert_eq!(unescape_mountinfo("/a\\040b/c"), "/a b/c");
        assert_eq!(unescape_mountinfo("/plain\\"), "/plain\\");
    }
}
