//! Resolves a docker `--user` value (`name`, `uid`, `name:group`,
//! `uid:gid`, ...) to numeric ids, supplementary groups and a home
//! directory, through the image's own `/etc/passwd` and `/etc/group`.
//!
//! Called by `bundle`; reads two files inside the rootfs and calls nothing
//! else of ours. The rules are those of runc's `user.GetExecUser`, which
//! docker uses: an empty user means uid 0 (and root's passwd entry when there
//! is one), a numeric user needs no passwd entry, a name must have one, an
//! explicit group replaces the primary group and then no supplementary
//! groups are added, otherwise every group listing the user by name is.
//!
//! The rootfs is image content, so it is untrusted: its `etc/passwd` may be a
//! symlink pointing anywhere, a FIFO, or huge. Files are opened with
//! `openat2(RESOLVE_IN_ROOT)`, which resolves every symlink and `..` as if
//! the rootfs were `/` (what docker does with `FollowSymlinkInScope`), must
//! be regular files, and are read up to [`MAX_FILE_BYTES`].

use std::io::{self, Read};
use std::path::Path;

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};

use super::BundleError;

/// The largest passwd or group file read (far above any real one).
pub const MAX_FILE_BYTES: u64 = 4 << 20;

/// The highest uid or gid accepted, as runc (`2^31 - 1`).
const MAX_ID: u32 = i32::MAX as u32;

/// A `--user` value resolved against the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups, in `/etc/group` order, without duplicates.
    pub additional_gids: Vec<u32>,
    /// The passwd home directory, `/` when there is no entry.
    pub home: String,
    /// The passwd user name, when an entry matched.
    pub name: Option<String>,
}

/// Resolves `user` (docker's `USER[:GROUP]`) through `rootfs`'s
/// `etc/passwd` and `etc/group`; missing files count as empty.
pub fn resolve_user(rootfs: &Path, user: &str) -> Result<ResolvedUser, BundleError> {
    let passwd = read_rootfs_file(rootfs, "etc/passwd")?;
    let group = read_rootfs_file(rootfs, "etc/group")?;
    resolve_user_with(user, passwd.as_deref(), group.as_deref())
}

/// [`resolve_user`] over file contents already read.
pub fn resolve_user_with(
    user: &str,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<ResolvedUser, BundleError> {
    if user.contains('\0') {
        return Err(BundleError::InvalidUser {
            user: user.to_string(),
            reason: "contains a NUL byte",
        });
    }
    let (user_arg, group_arg) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g).filter(|g| !g.is_empty())),
        None => (user, None),
    };
    let uid_arg = numeric_id(user_arg).map_err(|reason| BundleError::InvalidUser {
        user: user.to_string(),
        reason,
    })?;

    let mut out = ResolvedUser {
        uid: 0,
        gid: 0,
        additional_gids: Vec::new(),
        home: "/".to_string(),
        name: None,
    };
    let matched = passwd.into_iter().flat_map(passwd_entries).find(|e| {
        if user_arg.is_empty() {
            e.uid == 0
        } else if let Some(uid) = uid_arg {
            e.uid == uid
        } else {
            e.name == user_arg
        }
    });
    match matched {
        Some(entry) => {
            out.uid = entry.uid;
            out.gid = entry.gid;
            out.home = entry.home.to_string();
            out.name = Some(entry.name.to_string());
        }
        None => match uid_arg {
            Some(uid) => out.uid = uid,
            None if user_arg.is_empty() => {}
            None => return Err(BundleError::UnknownUser(user_arg.to_string())),
        },
    }

    if let Some(group_arg) = group_arg {
        let gid_arg = numeric_id(group_arg).map_err(|reason| BundleError::InvalidUser {
            user: user.to_string(),
            reason,
        })?;
        let found = group
            .into_iter()
            .flat_map(group_entries)
            .find(|e| match gid_arg {
                Some(gid) => e.gid == gid,
                None => e.name == group_arg,
            });
        out.gid = match (found, gid_arg) {
            (Some(entry), _) => entry.gid,
            (None, Some(gid)) => gid,
            (None, None) => return Err(BundleError::UnknownGroup(group_arg.to_string())),
        };
    } else if let Some(name) = out.name.as_deref() {
        for entry in group.into_iter().flat_map(group_entries) {
            if entry.members.split(',').any(|m| m.trim() == name)
                && !out.additional_gids.contains(&entry.gid)
            {
                out.additional_gids.push(entry.gid);
            }
        }
    }
    Ok(out)
}

/// `Ok(Some(id))` for an all-digit value in range, `Ok(None)` for a name,
/// an error for digits out of range.
fn numeric_id(s: &str) -> Result<Option<u32>, &'static str> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    match s.parse::<u32>() {
        Ok(id) if id <= MAX_ID => Ok(Some(id)),
        _ => Err("uid or gid out of range (0 to 2147483647)"),
    }
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

/// `name:password:uid:gid:gecos:home:shell` lines; lines that do not parse
/// are skipped (a malformed line never turns into uid 0).
fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    text.lines().filter_map(|line| {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 4 {
            return None;
        }
        Some(PasswdEntry {
            name: fields[0],
            uid: fields[2].parse().ok()?,
            gid: fields[3].parse().ok()?,
            home: fields
                .get(5)
                .copied()
                .filter(|h| !h.is_empty())
                .unwrap_or("/"),
        })
    })
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: &'a str,
}

/// `name:password:gid:user1,user2` lines; unparsable ones skipped.
fn group_entries(text: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    text.lines().filter_map(|line| {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 3 {
            return None;
        }
        Some(GroupEntry {
            name: fields[0],
            gid: fields[2].parse().ok()?,
            members: fields.get(3).copied().unwrap_or(""),
        })
    })
}

/// Reads `rel` inside `rootfs` with every path component resolved inside
/// the rootfs; `Ok(None)` when it does not exist.
fn read_rootfs_file(rootfs: &Path, rel: &str) -> Result<Option<String>, BundleError> {
    let fail = |source: io::Error| BundleError::RootfsRead {
        path: format!("/{rel}"),
        source,
    };
    let root = rustix::fs::open(
        rootfs,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| BundleError::RootfsRead {
        path: rootfs.display().to_string(),
        source: e.into(),
    })?;
    let fd = match rustix::fs::openat2(
        &root,
        rel,
        // NONBLOCK: opening a FIFO planted by the image must not hang.
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    ) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT | rustix::io::Errno::NOTDIR) => return Ok(None),
        Err(e) => return Err(fail(e.into())),
    };
    let stat = rustix::fs::fstat(&fd).map_err(|e| fail(e.into()))?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(fail(io::Error::new(
            io::ErrorKind::InvalidData,
            "not a regular file",
        )));
    }
    let mut bytes = Vec::new();
    std::fs::File::from(fd)
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(fail)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(fail(io::Error::new(
            io::ErrorKind::InvalidData,
            "larger than 4 MiB",
        )));
    }
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
        broken line\n\
        evil:x:notanumber:0::/evil:/bin/sh\n\
        app:x:1000:1000:App:/home/app:/bin/sh\n\
        nohome:x:1001:1001::\n";
    const GROUP: &str = "root:x:0:root\n\
        wheel:x:10:root,app\n\
        app:x:1000:\n\
        staff:x:50:app , other\n\
        audio:x:63:other\n\
        dup:x:10:app\n";

    fn resolve(user: &str) -> Result<ResolvedUser, BundleError> {
        resolve_user_with(user, Some(PASSWD), Some(GROUP))
    }

    #[test]
    fn empty_user_is_root_with_its_entry() {
        let u = resolve("").unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (0, 0, "/root"));
        assert_eq!(u.additional_gids, vec![0, 10]);
    }

    #[test]
    fn by_name_and_by_uid() {
        let by_name = resolve("app").unwrap();
        assert_eq!((by_name.uid, by_name.gid), (1000, 1000));
        assert_eq!(by_name.home, "/home/app");
        assert_eq!(by_name.additional_gids, vec![10, 50]);
        assert_eq!(resolve("1000").unwrap(), by_name);
    }

    #[test]
    fn unknown_numeric_uid_needs_no_entry() {
        let u = resolve("4242").unwrap();
        assert_eq!((u.uid, u.gid, u.home.as_str()), (4242, 0, "/"));
        assert!(u.additional_gids.is_empty());
        let u = resolve_user_with("4242:77", None, None).unwrap();
        assert_eq!((u.uid, u.gid), (4242, 77));
    }

    #[test]
    fn explicit_group_replaces_primary_and_supplementary() {
        let u = resolve("app:wheel").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 10));
        assert!(u.additional_gids.is_empty());
        let u = resolve("1000:63").unwrap();
        assert_eq!((u.uid, u.gid), (1000, 63));
        let u = resolve("app:999").unwrap();
        assert_eq!(u.gid, 999);
        // "user:" is the same as "user".
        assert_eq!(resolve("app:").unwrap(), resolve("app").unwrap());
    }

    #[test]
    fn unknown_names_are_errors_naming_them() {
        let err = resolve("nobody").unwrap_err();
        assert!(matches!(&err, BundleError::UnknownUser(n) if n == "nobody"));
        assert!(err.to_string().contains("nobody"), "{err}");
        let err = resolve("app:nogroup").unwrap_err();
        assert!(matches!(&err, BundleError::UnknownGroup(n) if n == "nogroup"));
        assert!(err.to_string().contains("nogroup"), "{err}");
        assert!(resolve_user_with("app", None, None).is_err());
    }

    #[test]
    fn malformed_lines_never_match_and_ranges_are_checked() {
        assert!(resolve("evil").is_err());
        assert_eq!(resolve("nohome").unwrap().home, "/");
        assert!(matches!(
            resolve("4294967295"),
            Err(BundleError::InvalidUser { .. })
        ));
        assert!(matches!(
            resolve("0:99999999999"),
            Err(BundleError::InvalidUser { .. })
        ));
    }

    #[test]
    fn rootfs_files_resolve_inside_the_rootfs() {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        // An absolute symlink means the rootfs's file, never the host's.
        std::fs::write(etc.join("passwd.real"), "svc:x:321:321::/srv:/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("/etc/passwd.real", etc.join("passwd")).unwrap();
        // Climbing out with .. stops at the rootfs.
        std::fs::write(dir.path().join("group.real"), "svcgrp:x:654:svc\n").unwrap();
        std::os::unix::fs::symlink("../../../../../group.real", etc.join("group")).unwrap();
        let u = resolve_user(dir.path(), "svc").unwrap();
        assert_eq!((u.uid, u.gid, u.additional_gids), (321, 321, vec![654]));
    }

    #[test]
    fn rootfs_without_etc_still_takes_numeric_ids() {
        let dir = tempfile::tempdir().unwrap();
        let u = resolve_user(dir.path(), "5:6").unwrap();
        assert_eq!((u.uid, u.gid), (5, 6));
        assert!(resolve_user(dir.path(), "app").is_err());
    }

    #[test]
    fn a_fifo_is_refused_not_waited_on() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        nix::unistd::mkfifo(
            &dir.path().join("etc/passwd"),
            nix::sys::stat::Mode::from_bits_truncate(0o644),
        )
        .unwrap();
        let err = resolve_user(dir.path(), "0").unwrap_err();
        assert!(err.to_string().contains("/etc/passwd"), "{err}");
    }
}
