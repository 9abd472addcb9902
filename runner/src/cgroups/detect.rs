//! Which cgroup layout the host has, found the way runc, crun and youki
//! find it: statfs(2) of the cgroup root tells cgroup2 (unified) from a
//! tmpfs holding v1 hierarchies; a cgroup2 filesystem at `<root>/unified`
//! makes the v1 layout "hybrid". For v1, each controller's mount point comes
//! from `/proc/self/mountinfo` (the super options of a `cgroup` mount list
//! its controllers, e.g. `rw,cpu,cpuacct`).
//!
//! The inputs (statfs and mountinfo) sit behind [`MountSource`] so tests
//! can feed fakes. Called by the `Manager`'s users; calls nix and std.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use nix::sys::statfs::{CGROUP_SUPER_MAGIC, CGROUP2_SUPER_MAGIC, FsType, TMPFS_MAGIC};

use super::Error;

/// What the detection reads from the host.
pub trait MountSource {
    /// The filesystem magic of the filesystem holding `path` (statfs).
    fn fs_type(&self, path: &Path) -> io::Result<FsType>;
    /// The text of `/proc/self/mountinfo`.
    fn mountinfo(&self) -> io::Result<String>;
}

/// The host's statfs(2) and `/proc/self/mountinfo`.
#[derive(Debug, Default, Clone, Copy)]
pub struct HostMounts;

impl MountSource for HostMounts {
    fn fs_type(&self, path: &Path) -> io::Result<FsType> {
        nix::sys::statfs::statfs(path)
            .map(|s| s.filesystem_type())
            .map_err(io::Error::from)
    }

    fn mountinfo(&self) -> io::Result<String> {
        std::fs::read_to_string("/proc/self/mountinfo")
    }
}

/// The host's cgroup layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hierarchy {
    /// cgroup v2 only, mounted at `root`.
    Unified { root: PathBuf },
    /// v1 controllers, plus a cgroup2 mount (usually `<root>/unified`) that
    /// holds no controllers wharf uses.
    Hybrid {
        controllers: BTreeMap<String, PathBuf>,
        unified: PathBuf,
    },
    /// v1 controllers only.
    Legacy {
        controllers: BTreeMap<String, PathBuf>,
    },
}

impl Hierarchy {
    /// The v1 controllers and their mount points (empty on unified hosts).
    pub fn v1_controllers(&self) -> Option<&BTreeMap<String, PathBuf>> {
        match self {
            Hierarchy::Unified { .. } => None,
            Hierarchy::Hybrid { controllers, .. } | Hierarchy::Legacy { controllers } => {
                Some(controllers)
            }
        }
    }
}

/// Detects the layout of the host's cgroups under `root` (normally
/// `/sys/fs/cgroup`).
pub fn detect(root: &Path) -> Result<Hierarchy, Error> {
    detect_with(&HostMounts, root)
}

/// [`detect`] with its inputs given.
pub fn detect_with(source: &dyn MountSource, root: &Path) -> Result<Hierarchy, Error> {
    let magic = source.fs_type(root).map_err(|e| Error::Detect {
        path: root.to_path_buf(),
        detail: e.to_string(),
    })?;
    if magic == CGROUP2_SUPER_MAGIC {
        return Ok(Hierarchy::Unified {
            root: root.to_path_buf(),
        });
    }
    if magic != TMPFS_MAGIC && magic != CGROUP_SUPER_MAGIC {
        return Err(Error::Detect {
            path: root.to_path_buf(),
            detail: format!(
                "not a cgroup filesystem (statfs magic {:#x})",
                magic.0 as u64
            ),
        });
    }
    let mountinfo = source.mountinfo().map_err(|e| Error::Detect {
        path: PathBuf::from("/proc/self/mountinfo"),
        detail: e.to_string(),
    })?;
    let controllers = v1_controllers(&mountinfo, root);
    if controllers.is_empty() {
        return Err(Error::Detect {
            path: root.to_path_buf(),
            detail: "no cgroup v1 controller is mounted under it".into(),
        });
    }
    let unified = root.join("unified");
    match source.fs_type(&unified) {
        Ok(m) if m == CGROUP2_SUPER_MAGIC => Ok(Hierarchy::Hybrid {
            controllers,
            unified,
        }),
        _ => Ok(Hierarchy::Legacy { controllers }),
    }
}

/// Controller name -> mount point, for every `cgroup` (v1) mount at or
/// under `root`. Named hierarchies (`name=systemd`) carry no controller and
/// are left out; the first mount of a controller wins (later ones are bind
/// mounts of the same hierarchy).
fn v1_controllers(mountinfo: &str, root: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    for line in mountinfo.lines() {
        // Format (proc(5)): id parent major:minor root mountpoint options
        // [optional fields...] - fstype source superoptions
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let Some(mount_point) = left.split(' ').nth(4) else {
            continue;
        };
        let mut right = right.split(' ');
        let (Some(fstype), Some(_source), Some(super_opts)) =
            (right.next(), right.next(), right.next())
        else {
            continue;
        };
        if fstype != "cgroup" {
            continue;
        }
        let mount_point = PathBuf::from(unescape(mount_point));
        if !mount_point.starts_with(root) {
            continue;
        }
        for opt in super_opts.split(',') {
            if is_controller_option(opt) {
                out.entry(opt.to_string())
                    .or_insert_with(|| mount_point.clone());
            }
        }
    }
    out
}

/// Mount options of a v1 cgroup mount that are not controller names.
fn is_controller_option(opt: &str) -> bool {
    !matches!(
        opt,
        "rw" | "ro"
            | "none"
            | "noprefix"
            | "clone_children"
            | "xattr"
            | "cpuset_v2_mode"
            | "favordynmods"
    ) && !opt.contains('=')
        && !opt.is_empty()
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`,
/// `\134`). Hand-written: four escapes do not warrant a crate.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') as u32 * 64
                + (bytes[i + 2] - b'0') as u32 * 8
                + (bytes[i + 3] - b'0') as u32;
            if let Ok(b) = u8::try_from(v) {
                out.push(b);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake {
        magics: BTreeMap<PathBuf, FsType>,
        mountinfo: String,
    }

    impl MountSource for Fake {
        fn fs_type(&self, path: &Path) -> io::Result<FsType> {
            self.magics
                .get(path)
                .copied()
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))
        }
        fn mountinfo(&self) -> io::Result<String> {
            Ok(self.mountinfo.clone())
        }
    }

    const HYBRID_MOUNTINFO: &str = "\
23 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime shared:12 - cgroup cgroup rw,memory
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 1 0:32 / /elsewhere/memory rw,relatime - cgroup cgroup rw,memory
";

    fn fake(magics: &[(&str, FsType)], mountinfo: &str) -> Fake {
        Fake {
            magics: magics.iter().map(|(p, m)| (PathBuf::from(p), *m)).collect(),
            mountinfo: mountinfo.to_string(),
        }
    }

    #[test]
    fn cgroup2_root_is_unified() {
        let f = fake(&[("/sys/fs/cgroup", CGROUP2_SUPER_MAGIC)], "");
        assert_eq!(
            detect_with(&f, Path::new("/sys/fs/cgroup")).unwrap(),
            Hierarchy::Unified {
                root: "/sys/fs/cgroup".into()
            }
        );
    }

    #[test]
    fn tmpfs_root_with_unified_cgroup2_is_hybrid() {
        let f = fake(
            &[
                ("/sys/fs/cgroup", TMPFS_MAGIC),
                ("/sys/fs/cgroup/unified", CGROUP2_SUPER_MAGIC),
            ],
            HYBRID_MOUNTINFO,
        );
        let h = detect_with(&f, Path::new("/sys/fs/cgroup")).unwrap();
        let Hierarchy::Hybrid {
            controllers,
            unified,
        } = h
        else {
            panic!("expected hybrid, got {h:?}");
        };
        assert_eq!(unified, PathBuf::from("/sys/fs/cgroup/unified"));
        let names: Vec<&str> = controllers.keys().map(String::as_str).collect();
        assert_eq!(names, ["blkio", "cpu", "cpuacct", "memory", "pids"]);
        assert_eq!(
            controllers["memory"],
            PathBuf::from("/sys/fs/cgroup/memory")
        );
    }

    #[test]
    fn tmpfs_root_without_cgroup2_is_legacy_and_comounts_share_a_dir() {
        let info = "\
31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
33 31 0:30 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
34 31 0:31 / /sys/fs/cgroup/with\\040space rw - cgroup cgroup rw,pids
";
        let f = fake(
            &[
                ("/sys/fs/cgroup", TMPFS_MAGIC),
                ("/sys/fs/cgroup/unified", TMPFS_MAGIC),
            ],
            info,
        );
        let h = detect_with(&f, Path::new("/sys/fs/cgroup")).unwrap();
        let Hierarchy::Legacy { controllers } = h else {
            panic!("expected legacy, got {h:?}");
        };
        assert_eq!(controllers["cpu"], controllers["cpuacct"]);
        assert_eq!(
            controllers["cpu"],
            PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")
        );
        assert_eq!(
            controllers["pids"],
            PathBuf::from("/sys/fs/cgroup/with space")
        );
    }

    #[test]
    fn other_filesystems_are_refused_with_the_path() {
        let ext4 = FsType(0xEF53);
        let f = fake(&[("/sys/fs/cgroup", ext4)], "");
        let err = detect_with(&f, Path::new("/sys/fs/cgroup")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("/sys/fs/cgroup"), "{msg}");
        assert!(msg.contains("0xef53"), "{msg}");
    }

    #[test]
    fn tmpfs_without_controllers_is_an_error() {
        let f = fake(&[("/sys/fs/cgroup", TMPFS_MAGIC)], "");
        assert!(detect_with(&f, Path::new("/sys/fs/cgroup")).is_err());
    }

    #[test]
    fn this_host_is_detected() {
        // The machines wharf is built and tested on run hybrid v1; a
        // unified host is fine as well. Either way detection must work.
        let h = detect(Path::new("/sys/fs/cgroup")).unwrap();
        if let Some(c) = h.v1_controllers() {
            assert!(c.contains_key("memory"), "{h:?}");
        }
    }
}
