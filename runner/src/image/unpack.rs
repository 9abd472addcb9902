//! Safe extraction of one image layer (an uncompressed tar stream) into an
//! empty directory that becomes one overlayfs lower layer.
//!
//! Direction of calls: `pull` calls [`unpack_layer`] on a blocking thread
//! with the decompressed stream; this module calls only the `tar`, `cap-std`
//! and `rustix` crates and nothing else in the runner.
//!
//! Why it is written this way: a layer is untrusted input and must never
//! write outside its own directory. String checks alone cannot promise that
//! (a symlink extracted earlier in the same layer can redirect a later
//! entry), so every parent directory is opened through `cap-std`, which
//! resolves paths beneath the layer root and refuses `..`, absolute symlinks
//! and symlink chains that lead out. The final component of each entry is
//! then created with a single-name `*at` call (rustix) on that parent's fd,
//! never following a symlink there. `tar::Entry::unpack` is not used because
//! it resolves paths with plain `std::fs` calls and knows nothing of OCI
//! whiteouts; the tar crate still does the parsing (PAX, GNU long names).
//!
//! OCI whiteouts become what overlayfs understands: `dir/.wh.name` a 0/0
//! character device `dir/name`, `dir/.wh..wh..opq` the `trusted.overlay.opaque`
//! xattr on `dir`. Later entries replace earlier ones at the same path;
//! directories get their mode and mtime after all entries are written.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use cap_std::ambient_authority;
use cap_std::fs::{Dir, DirBuilder, DirBuilderExt};
use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, Timestamps, Uid, XattrFlags};
use rustix::io::Errno;
use rustix::time::Timespec;

/// Longest entry path or link target accepted (Linux's PATH_MAX).
pub const MAX_PATH_LEN: usize = 4096;
/// Most entries one layer may hold; real layers have tens of thousands.
pub const MAX_ENTRIES: u64 = 1_000_000;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// The marker that makes its directory opaque.
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// Other `.wh..wh.` names are aufs bookkeeping (`.wh..wh.plnk`, ...); docker
/// and containerd ignore them, and so do we.
const AUFS_META_PREFIX: &[u8] = b".wh..wh.";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// Overlayfs keeps its own metadata under this prefix; a layer must express
/// opaque dirs through whiteout markers, not forge redirects or metacopy.
const OVERLAY_XATTR_PREFIX: &str = "trusted.overlay.";
const PAX_XATTR_PREFIX: &str = "SCHILY.xattr.";

/// What one unpack wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UnpackStats {
    /// Tar entries processed (files, dirs, links, whiteouts, ...).
    pub entries: u64,
    /// Bytes of regular file content written.
    pub bytes: u64,
}

/// Why a layer could not be unpacked. Entry errors name the entry's path as
/// written in the tar; the caller adds the layer digest.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("cannot open layer directory {}: {source}", dir.display())]
    Dest {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading the tar stream after {entries} entries: {source}")]
    Read {
        entries: u64,
        #[source]
        source: io::Error,
    },
    #[error("layer has more than {max} entries")]
    TooManyEntries { max: u64 },
    #[error("tar entry {path:?} refused: {reason}")]
    Refused { path: String, reason: String },
    #[error("tar entry {path:?}: {op}: {source}")]
    Io {
        path: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

/// Extracts the uncompressed tar stream `reader` into `dest`, an existing
/// empty directory. Blocking. Nothing is ever written outside `dest`; on
/// error `dest` may hold a partial tree the caller removes.
pub fn unpack_layer(reader: impl Read, dest: &Path) -> Result<UnpackStats, UnpackError> {
    unpack_with_limit(reader, dest, MAX_ENTRIES)
}

fn unpack_with_limit(
    reader: impl Read,
    dest: &Path,
    max_entries: u64,
) -> Result<UnpackStats, UnpackError> {
    let root =
        Dir::open_ambient_dir(dest, ambient_authority()).map_err(|source| UnpackError::Dest {
            dir: dest.to_path_buf(),
            source,
        })?;
    let mut unpacker = Unpacker {
        root,
        dirs: BTreeMap::new(),
        stats: UnpackStats::default(),
    };
    let mut archive = tar::Archive::new(reader);
    let entries = archive
        .entries()
        .map_err(|source| UnpackError::Read { entries: 0, source })?;
    for entry in entries {
        let mut entry = entry.map_err(|source| UnpackError::Read {
            entries: unpacker.stats.entries,
            source,
        })?;
        if unpacker.stats.entries >= max_entries {
            return Err(UnpackError::TooManyEntries { max: max_entries });
        }
        unpacker.stats.entries += 1;
        unpacker.entry(&mut entry)?;
    }
    unpacker.finish_dirs()?;
    Ok(unpacker.stats)
}

/// Splits a tar path into its normal components, refusing what could point
/// outside the layer. `.` and empty components (`./a//b/`) are dropped.
fn components(raw: &[u8]) -> Result<Vec<&OsStr>, String> {
    if raw.len() > MAX_PATH_LEN {
        return Err(format!(
            "path is {} bytes, longer than {MAX_PATH_LEN}",
            raw.len()
        ));
    }
    if raw.starts_with(b"/") {
        return Err("absolute path".into());
    }
    if raw.contains(&0) {
        return Err("NUL byte in path".into());
    }
    let mut parts = Vec::new();
    for part in raw.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => return Err("path contains a `..` component".into()),
            p => parts.push(OsStr::from_bytes(p)),
        }
    }
    Ok(parts)
}

fn join(parts: &[&OsStr]) -> PathBuf {
    parts.iter().collect()
}

/// Metadata from an entry's header and PAX records.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: Timespec,
    xattrs: Vec<(String, Vec<u8>)>,
}

impl Meta {
    fn from_entry<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Self, String> {
        let header = entry.header();
        let bad = |what: &str, e: io::Error| format!("bad {what} in header: {e}");
        let mode = header.mode().map_err(|e| bad("mode", e))? & 0o7777;
        let mut uid = header.uid().map_err(|e| bad("uid", e))?;
        let mut gid = header.gid().map_err(|e| bad("gid", e))?;
        let mut mtime = Timespec {
            tv_sec: i64::try_from(header.mtime().map_err(|e| bad("mtime", e))?).unwrap_or(i64::MAX),
            tv_nsec: 0,
        };
        let mut xattrs = Vec::new();
        if let Some(pax) = entry.pax_extensions().map_err(|e| bad("PAX records", e))? {
            for ext in pax {
                let ext = ext.map_err(|e| bad("PAX record", e))?;
                let Ok(key) = ext.key() else { continue };
                let value = ext.value_bytes();
                let number = || {
                    std::str::from_utf8(value)
                        .ok()
                        .and_then(|v| v.parse::<u64>().ok())
                        .ok_or_else(|| {
                            format!("bad PAX {key} {:?}", String::from_utf8_lossy(value))
                        })
                };
                match key {
                    "uid" => uid = number()?,
                    "gid" => gid = number()?,
                    "mtime" => {
                        if let Some(t) = parse_pax_time(value) {
                            mtime = t;
                        }
                    }
                    _ => {
                        if let Some(name) = key.strip_prefix(PAX_XATTR_PREFIX) {
                            xattrs.push((name.to_string(), value.to_vec()));
                        }
                    }
                }
            }
        }
        let id = |what: &str, v: u64| u32::try_from(v).map_err(|_| format!("{what} {v} too large"));
        Ok(Self {
            mode,
            uid: id("uid", uid)?,
            gid: id("gid", gid)?,
            mtime,
            xattrs,
        })
    }

    fn times(&self) -> Timestamps {
        // Like tar: the access time is set to the modification time.
        Timestamps {
            last_access: self.mtime,
            last_modification: self.mtime,
        }
    }
}

/// PAX times are decimal seconds with an optional fraction ("1700000000.5").
/// Unparseable values fall back to the header's mtime.
fn parse_pax_time(value: &[u8]) -> Option<Timespec> {
    let text = std::str::from_utf8(value).ok()?;
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    let tv_sec: i64 = secs.parse().ok()?;
    let mut tv_nsec = 0i64;
    if tv_sec >= 0 && !frac.is_empty() {
        let digits: String = frac.chars().take(9).collect();
        let padded = format!("{digits:0<9}");
        tv_nsec = padded.parse().ok()?;
    }
    Some(Timespec { tv_sec, tv_nsec })
}

/// A directory's mode and mtime, applied after all entries (writing its
/// contents would change the mtime; a read-only mode is set last too).
struct DirMeta {
    mode: u32,
    mtime: Timespec,
}

/// What was at an entry's path before it was written.
#[derive(PartialEq, Eq)]
enum Existing {
    Nothing,
    /// A directory that the new directory entry merges into.
    Dir,
    /// A whiteout from this layer (a 0/0 character device), now removed.
    Whiteout,
    /// Something else, now removed.
    Other,
}

struct Unpacker {
    root: Dir,
    /// Directories created by entries, by path below the root.
    dirs: BTreeMap<PathBuf, DirMeta>,
    stats: UnpackStats,
}

/// Maps a cap-std resolution error: PermissionDenied is its "a path led
/// outside of the filesystem" (as root, real EACCES does not happen here).
fn resolve_error(path: &str, e: io::Error) -> UnpackError {
    if e.kind() == io::ErrorKind::PermissionDenied {
        UnpackError::Refused {
            path: path.to_string(),
            reason: format!("path leads outside the layer (through `..` or a symlink): {e}"),
        }
    } else {
        UnpackError::Io {
            path: path.to_string(),
            op: "opening the parent directory",
            source: e,
        }
    }
}

impl Unpacker {
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), UnpackError> {
        let raw_path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw_path).into_owned();
        let refuse = |reason: String| UnpackError::Refused {
            path: shown.clone(),
            reason,
        };
        let io_err = |op: &'static str| {
            let path = shown.clone();
            move |source: io::Error| UnpackError::Io { path, op, source }
        };
        let mut kind = entry.header().entry_type();
        if kind == tar::EntryType::XGlobalHeader {
            return Ok(()); // global PAX defaults carry nothing we apply
        }
        if kind == tar::EntryType::Regular && raw_path.ends_with(b"/") {
            // Pre-POSIX tars mark directories by the trailing slash only
            // (Go's archive/tar reads them the same way).
            kind = tar::EntryType::Directory;
        }
        let parts = components(&raw_path).map_err(refuse)?;
        let Some((name, parents)) = parts.split_last() else {
            // The layer root itself ("./"). Like docker, its metadata is not
            // applied: the root of the container comes from overlayfs.
            return Ok(());
        };
        let name = *name;
        if name.as_bytes().starts_with(WHITEOUT_PREFIX) {
            return self.whiteout(parents, name.as_bytes(), &shown);
        }
        let meta = Meta::from_entry(entry).map_err(refuse)?;
        let parent = self.open_parent(parents, &shown)?;
        let full = join(&parts);
        use tar::EntryType as T;
        match kind {
            T::Regular | T::Continuous | T::GNUSparse => {
                self.prepare(&parent, name, false, &full)
                    .map_err(io_err("removing what was at the path"))?;
                let fd = rustix::fs::openat(
                    &parent,
                    name,
                    OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::WRONLY
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(|e| io_err("creating the file")(e.into()))?;
                let mut file = std::fs::File::from(fd);
                let written = io::copy(entry, &mut file).map_err(io_err("writing the file"))?;
                self.stats.bytes += written;
                apply_fd_meta(&file, &meta, true).map_err(io_err("setting file metadata"))?;
            }
            T::Directory => {
                let existing = self
                    .prepare(&parent, name, true, &full)
                    .map_err(io_err("removing what was at the path"))?;
                if existing != Existing::Dir {
                    rustix::fs::mkdirat(&parent, name, Mode::from_raw_mode(0o700))
                        .map_err(|e| io_err("creating the directory")(e.into()))?;
                }
                let fd = open_dir_nofollow(&parent, name)
                    .map_err(|e| io_err("opening the directory")(e.into()))?;
                // Mode and mtime come at the end (see finish_dirs).
                apply_fd_meta(&fd, &meta, false).map_err(io_err("setting dir metadata"))?;
                if existing == Existing::Whiteout {
                    // A whiteout then a dir in one layer: the lower dir is
                    // gone and this one is new, which overlayfs calls opaque.
                    set_opaque(&fd).map_err(io_err("setting the opaque xattr"))?;
                }
                self.dirs.insert(
                    full,
                    DirMeta {
                        mode: meta.mode,
                        mtime: meta.mtime,
                    },
                );
            }
            T::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| refuse("symlink without a target".into()))?;
                if target.is_empty() || target.len() > MAX_PATH_LEN || target.contains(&0) {
                    return Err(refuse(format!(
                        "symlink target is empty, contains NUL or exceeds {MAX_PATH_LEN} bytes"
                    )));
                }
                self.prepare(&parent, name, false, &full)
                    .map_err(io_err("removing what was at the path"))?;
                // Created as-is: a target outside the layer is just a link;
                // writes through it are refused when resolving later paths.
                rustix::fs::symlinkat(OsStr::from_bytes(&target), &parent, name)
                    .map_err(|e| io_err("creating the symlink")(e.into()))?;
                apply_at_meta(&parent, name, &meta, false)
                    .map_err(io_err("setting symlink metadata"))?;
            }
            T::Link => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| refuse("hard link without a target".into()))?;
                self.hard_link(&parent, name, &full, &target, &shown)?;
            }
            T::Char | T::Block | T::Fifo => {
                let header = entry.header();
                let dev_num = |v: io::Result<Option<u32>>| {
                    v.map(Option::unwrap_or_default)
                        .map_err(|e| refuse(format!("bad device number: {e}")))
                };
                let (file_type, dev) = match kind {
                    T::Char => (FileType::CharacterDevice, true),
                    T::Block => (FileType::BlockDevice, true),
                    _ => (FileType::Fifo, false),
                };
                let dev = if dev {
                    rustix::fs::makedev(
                        dev_num(header.device_major())?,
                        dev_num(header.device_minor())?,
                    )
                } else {
                    0
                };
                self.prepare(&parent, name, false, &full)
                    .map_err(io_err("removing what was at the path"))?;
                rustix::fs::mknodat(&parent, name, file_type, Mode::from_raw_mode(0o600), dev)
                    .map_err(|e| io_err("creating the device node")(e.into()))?;
                apply_at_meta(&parent, name, &meta, true)
                    .map_err(io_err("setting node metadata"))?;
            }
            other => {
                return Err(refuse(format!("unsupported tar entry type {other:?}")));
            }
        }
        Ok(())
    }

    /// Opens the directory that will hold an entry, creating missing
    /// parents (0755, as docker does). Resolution stays beneath the root.
    fn open_parent(&self, parents: &[&OsStr], shown: &str) -> Result<Dir, UnpackError> {
        if parents.is_empty() {
            return self.root.try_clone().map_err(|e| resolve_error(shown, e));
        }
        let path = join(parents);
        match self.root.open_dir(&path) {
            Ok(dir) => Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let mut builder = DirBuilder::new();
                builder.recursive(true).mode(0o755);
                self.root
                    .create_dir_with(&path, &builder)
                    .map_err(|e| resolve_error(shown, e))?;
                self.root
                    .open_dir(&path)
                    .map_err(|e| resolve_error(shown, e))
            }
            Err(e) => Err(resolve_error(shown, e)),
        }
    }

    /// Clears `name` in `parent` for a new entry (later entries replace
    /// earlier ones), keeping a directory when a directory comes again.
    fn prepare(
        &mut self,
        parent: &Dir,
        name: &OsStr,
        want_dir: bool,
        full: &Path,
    ) -> io::Result<Existing> {
        let st = match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Ok(Existing::Nothing),
            Err(e) => return Err(e.into()),
        };
        let file_type = FileType::from_raw_mode(st.st_mode);
        if file_type == FileType::Directory {
            if want_dir {
                return Ok(Existing::Dir);
            }
            // cap-std's remove_dir_all does not follow symlinks inside.
            parent.remove_dir_all(name)?;
            self.forget_dirs_under(full);
            return Ok(Existing::Other);
        }
        rustix::fs::unlinkat(parent, name, AtFlags::empty())?;
        if file_type == FileType::CharacterDevice && st.st_rdev == 0 {
            Ok(Existing::Whiteout)
        } else {
            Ok(Existing::Other)
        }
    }

    /// Drops the deferred metadata of a removed directory and everything in
    /// it. Paths order by component, so the subtree is one contiguous range.
    fn forget_dirs_under(&mut self, full: &Path) {
        let gone: Vec<PathBuf> = self
            .dirs
            .range(full.to_path_buf()..)
            .take_while(|(p, _)| p.starts_with(full))
            .map(|(p, _)| p.clone())
            .collect();
        for p in gone {
            self.dirs.remove(&p);
        }
    }

    fn whiteout(
        &mut self,
        parents: &[&OsStr],
        name: &[u8],
        shown: &str,
    ) -> Result<(), UnpackError> {
        let io_err = |op: &'static str| {
            move |source: io::Error| UnpackError::Io {
                path: shown.to_string(),
                op,
                source,
            }
        };
        if name == OPAQUE_MARKER {
            let dir = if parents.is_empty() {
                self.root.try_clone().map_err(|e| resolve_error(shown, e))?
            } else {
                let Some((dname, dparents)) = parents.split_last() else {
                    return Ok(()); // unreachable: `parents` is not empty
                };
                let parent = self.open_parent(dparents, shown)?;
                match rustix::fs::statat(&parent, *dname, AtFlags::SYMLINK_NOFOLLOW) {
                    Err(Errno::NOENT) => {
                        rustix::fs::mkdirat(&parent, *dname, Mode::from_raw_mode(0o755))
                            .map_err(|e| io_err("creating the opaque directory")(e.into()))?;
                    }
                    Err(e) => return Err(io_err("inspecting the opaque directory")(e.into())),
                    Ok(_) => {}
                }
                let fd = open_dir_nofollow(&parent, dname)
                    .map_err(|e| io_err("opening the opaque directory")(e.into()))?;
                Dir::from_std_file(std::fs::File::from(fd))
            };
            return set_opaque(&dir).map_err(io_err("setting the opaque xattr"));
        }
        if name.starts_with(AUFS_META_PREFIX) {
            return Ok(());
        }
        let hidden = &name[WHITEOUT_PREFIX.len()..];
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(UnpackError::Refused {
                path: shown.to_string(),
                reason: "whiteout names no file".into(),
            });
        }
        let hidden = OsStr::from_bytes(hidden);
        let parent = self.open_parent(parents, shown)?;
        match rustix::fs::statat(&parent, hidden, AtFlags::SYMLINK_NOFOLLOW) {
            Err(Errno::NOENT) => {
                rustix::fs::mknodat(
                    &parent,
                    hidden,
                    FileType::CharacterDevice,
                    Mode::empty(),
                    rustix::fs::makedev(0, 0),
                )
                .map_err(|e| io_err("creating the whiteout device")(e.into()))?;
            }
            Err(e) => return Err(io_err("inspecting the whited-out path")(e.into())),
            // Whiteouts only hide lower layers: a file this layer wrote
            // already hides them, a dir this layer wrote must become opaque.
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                let fd = open_dir_nofollow(&parent, hidden)
                    .map_err(|e| io_err("opening the whited-out directory")(e.into()))?;
                set_opaque(&fd).map_err(io_err("setting the opaque xattr"))?;
            }
            Ok(_) => {}
        }
        Ok(())
    }

    fn hard_link(
        &mut self,
        parent: &Dir,
        name: &OsStr,
        full: &Path,
        target: &[u8],
        shown: &str,
    ) -> Result<(), UnpackError> {
        let refuse = |reason: String| UnpackError::Refused {
            path: shown.to_string(),
            reason,
        };
        let target_shown = String::from_utf8_lossy(target).into_owned();
        let tparts = components(target)
            .map_err(|r| refuse(format!("hard link target {target_shown:?}: {r}")))?;
        let Some((tname, tparents)) = tparts.split_last() else {
            return Err(refuse("hard link to the layer root".into()));
        };
        let tparent = if tparents.is_empty() {
            self.root.try_clone()
        } else {
            self.root.open_dir(join(tparents))
        };
        let not_extracted = || {
            refuse(format!(
                "hard link target {target_shown:?} was not extracted before it"
            ))
        };
        let tparent = match tparent {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(not_extracted()),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                return Err(refuse(format!(
                    "hard link target {target_shown:?} leads outside the layer: {e}"
                )));
            }
            Err(e) => return Err(resolve_error(shown, e)),
        };
        // The layer dir started empty, so whatever exists beneath it was
        // extracted by an earlier entry of this layer.
        match rustix::fs::statat(&tparent, *tname, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                return Err(refuse(format!(
                    "hard link target {target_shown:?} is a directory"
                )));
            }
            Ok(_) => {}
            Err(Errno::NOENT) | Err(Errno::NOTDIR) => return Err(not_extracted()),
            Err(e) => {
                return Err(UnpackError::Io {
                    path: shown.to_string(),
                    op: "inspecting the hard link target",
                    source: e.into(),
                });
            }
        }
        if join(&tparts) == full {
            return Ok(()); // a link to itself: the file is already there
        }
        let io_err = |op: &'static str| {
            move |source: io::Error| UnpackError::Io {
                path: shown.to_string(),
                op,
                source,
            }
        };
        self.prepare(parent, name, false, full)
            .map_err(io_err("removing what was at the path"))?;
        // Flags 0: a symlink target is linked itself, never followed.
        rustix::fs::linkat(&tparent, *tname, parent, name, AtFlags::empty())
            .map_err(|e| io_err("creating the hard link")(e.into()))
    }

    /// Applies the deferred mode and mtime of every directory, deepest
    /// first. Directories replaced since were forgotten or are skipped.
    fn finish_dirs(&mut self) -> Result<(), UnpackError> {
        let mut dirs: Vec<_> = std::mem::take(&mut self.dirs).into_iter().collect();
        dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
        for (path, meta) in dirs {
            let shown = path.to_string_lossy().into_owned();
            let io_err = |op: &'static str| {
                let path = shown.clone();
                move |source: io::Error| UnpackError::Io { path, op, source }
            };
            let (Some(name), Some(parent_path)) = (path.file_name(), path.parent()) else {
                continue;
            };
            let parent = if parent_path.as_os_str().is_empty() {
                self.root
                    .try_clone()
                    .map_err(|e| resolve_error(&shown, e))?
            } else {
                match self.root.open_dir(parent_path) {
                    Ok(d) => d,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(resolve_error(&shown, e)),
                }
            };
            let fd = match open_dir_nofollow(&parent, name) {
                Ok(fd) => fd,
                Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => continue,
                Err(e) => return Err(io_err("opening the directory")(e.into())),
            };
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(meta.mode))
                .map_err(|e| io_err("setting the directory mode")(e.into()))?;
            let times = Timestamps {
                last_access: meta.mtime,
                last_modification: meta.mtime,
            };
            rustix::fs::futimens(&fd, &times)
                .map_err(|e| io_err("setting the directory mtime")(e.into()))?;
        }
        Ok(())
    }
}

fn open_dir_nofollow(parent: impl AsFd, name: &OsStr) -> rustix::io::Result<std::os::fd::OwnedFd> {
    rustix::fs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

fn set_opaque(dir: impl AsFd) -> io::Result<()> {
    rustix::fs::fsetxattr(dir, OPAQUE_XATTR, b"y", XattrFlags::empty()).map_err(Into::into)
}

/// Ownership first (chown clears setuid/setgid and file capabilities), then
/// the mode, xattrs and, for files, the times (writing changed them).
fn apply_fd_meta(fd: impl AsFd, meta: &Meta, mode_and_times: bool) -> io::Result<()> {
    let fd = fd.as_fd();
    rustix::fs::fchown(
        fd,
        Some(Uid::from_raw(meta.uid)),
        Some(Gid::from_raw(meta.gid)),
    )?;
    if mode_and_times {
        rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode))?;
    }
    for (key, value) in &meta.xattrs {
        if skip_xattr(key) {
            continue;
        }
        tolerate_unsupported(
            key,
            rustix::fs::fsetxattr(fd, key.as_str(), value, XattrFlags::empty()),
        )?;
    }
    if mode_and_times {
        rustix::fs::futimens(fd, &meta.times())?;
    }
    Ok(())
}

/// The same for nodes that cannot be opened for writing metadata through an
/// fd (symlinks, device nodes, fifos): single-name `*at` calls that do not
/// follow a symlink, and xattrs through the parent's `/proc/self/fd` entry.
fn apply_at_meta(parent: &Dir, name: &OsStr, meta: &Meta, chmod: bool) -> io::Result<()> {
    rustix::fs::chownat(
        parent,
        name,
        Some(Uid::from_raw(meta.uid)),
        Some(Gid::from_raw(meta.gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )?;
    if chmod {
        // `name` was just created by mknodat, so it is not a symlink.
        rustix::fs::chmodat(
            parent,
            name,
            Mode::from_raw_mode(meta.mode),
            AtFlags::empty(),
        )?;
    }
    if !meta.xattrs.is_empty() {
        let mut path = PathBuf::from(format!("/proc/self/fd/{}", parent.as_fd().as_raw_fd()));
        path.push(name);
        for (key, value) in &meta.xattrs {
            if skip_xattr(key) {
                continue;
            }
            tolerate_unsupported(
                key,
                rustix::fs::lsetxattr(&path, key.as_str(), value, XattrFlags::empty()),
            )?;
        }
    }
    rustix::fs::utimensat(parent, name, &meta.times(), AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(())
}

fn skip_xattr(key: &str) -> bool {
    if key.starts_with(OVERLAY_XATTR_PREFIX) {
        tracing::warn!(xattr = key, "ignoring overlayfs xattr in a layer entry");
        return true;
    }
    false
}

/// A filesystem without support for an xattr namespace (e.g. `user.` on
/// symlinks) is not worth failing a pull over; docker does the same.
fn tolerate_unsupported(key: &str, result: rustix::io::Result<()>) -> io::Result<()> {
    match result {
        Err(Errno::OPNOTSUPP) => {
            tracing::warn!(xattr = key, "xattr not supported here, skipped");
            Ok(())
        }
        // The kernel refuses `user.` xattrs on symlinks and device nodes.
        Err(Errno::PERM) if key.starts_with("user.") => {
            tracing::warn!(xattr = key, "user xattr not allowed on this node, skipped");
            Ok(())
        }
        other => other.map_err(Into::into),
    }
}

#[cfg(test)]
mod tests {
    //! These tests run as root (device nodes, chown, trusted xattrs).
    use super::*;
    use std::fs;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    use tar::EntryType as T;

    const MTIME: u64 = 1_600_000_000;

    /// A layer tarball built in memory. Names and link names are written
    /// straight into the header bytes, so `..` and absolute paths (which
    /// `tar::Builder` refuses) can be written too.
    struct Layer(tar::Builder<Vec<u8>>);

    fn header(kind: T, path: &str, link: &str, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(MTIME);
        h.set_size(size);
        let old = h.as_old_mut();
        old.name.fill(0);
        old.name[..path.len()].copy_from_slice(path.as_bytes());
        old.linkname.fill(0);
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        h
    }

    impl Layer {
        fn new() -> Self {
            Self(tar::Builder::new(Vec::new()))
        }
        fn add(&mut self, mut h: tar::Header, data: &[u8]) -> &mut Self {
            h.set_cksum();
            self.0.append(&h, data).unwrap();
            self
        }
        fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> &mut Self {
            self.add(header(T::Regular, path, "", mode, data.len() as u64), data)
        }
        fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
            self.add(header(T::Directory, path, "", mode, 0), b"")
        }
        fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
            self.add(header(T::Symlink, path, target, 0o777, 0), b"")
        }
        fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
            self.add(header(T::Link, path, target, 0o644, 0), b"")
        }
        fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
            self.0
                .append_pax_extensions(records.iter().copied())
                .unwrap();
            self
        }
        fn bytes(&mut self) -> Vec<u8> {
            let b = std::mem::replace(&mut self.0, tar::Builder::new(Vec::new()));
            b.into_inner().unwrap()
        }
    }

    /// A temp dir holding `layer/` (the destination) and `outside/`.
    struct Scratch {
        _tmp: tempfile::TempDir,
        layer: PathBuf,
        outside: PathBuf,
    }

    fn scratch() -> Scratch {
        let tmp = tempfile::tempdir().unwrap();
        let layer = tmp.path().join("layer");
        let outside = tmp.path().join("outside");
        fs::create_dir(&layer).unwrap();
        fs::create_dir(&outside).unwrap();
        Scratch {
            _tmp: tmp,
            layer,
            outside,
        }
    }

    fn unpack(layer: &mut Layer, dest: &Path) -> Result<UnpackStats, UnpackError> {
        unpack_layer(io::Cursor::new(layer.bytes()), dest)
    }

    fn outside_is_empty(s: &Scratch) -> bool {
        fs::read_dir(&s.outside).unwrap().next().is_none()
            && !s.layer.parent().unwrap().join("escape").exists()
    }

    fn refused_path(err: UnpackError) -> String {
        match err {
            UnpackError::Refused { path, .. } => path,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 256];
        let n = rustix::fs::lgetxattr(path, name, &mut buf[..]).ok()?;
        buf.truncate(n);
        Some(buf)
    }

    #[test]
    fn unpacks_files_dirs_links_nodes_and_metadata() {
        let s = scratch();
        let mut layer = Layer::new();
        layer.dir("./", 0o755).dir("etc/", 0o755);
        let mut h = header(T::Regular, "etc/tool", "", 0o4755, 5);
        h.set_uid(1000);
        h.set_gid(1001);
        layer.pax(&[
            ("SCHILY.xattr.user.origin", b"layer"),
            (
                "SCHILY.xattr.security.capability",
                b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
            ),
        ]);
        layer.add(h, b"hello");
        layer
            .symlink("etc/link", "tool")
            .hardlink("etc/hard", "etc/tool")
            .dir("secret/", 0o1700)
            .file("secret/inner", 0o600, b"x")
            .file("deep/a/b/file", 0o644, b"implicit parents")
            .add(header(T::Fifo, "run/fifo", "", 0o620, 0), b"");
        let mut h = header(T::Char, "dev/null", "", 0o666, 0);
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
        layer.add(h, b"");
        let mut h = header(T::Block, "dev/loop9", "", 0o660, 0);
        h.set_device_major(7).unwrap();
        h.set_device_minor(9).unwrap();
        layer.add(h, b"");

        let stats = unpack(&mut layer, &s.layer).unwrap();
        assert_eq!(stats.entries, 11);
        assert_eq!(stats.bytes, 5 + 1 + 16);

        let root = &s.layer;
        let tool = fs::symlink_metadata(root.join("etc/tool")).unwrap();
        assert_eq!(fs::read(root.join("etc/tool")).unwrap(), b"hello");
        assert_eq!(tool.mode() & 0o7777, 0o4755, "setuid survives the chown");
        assert_eq!((tool.uid(), tool.gid()), (1000, 1001));
        assert_eq!(tool.mtime(), MTIME as i64);
        assert_eq!(tool.nlink(), 2);
        let hard = fs::symlink_metadata(root.join("etc/hard")).unwrap();
        assert_eq!(hard.ino(), tool.ino());
        assert_eq!(
            xattr(&root.join("etc/tool"), "user.origin").unwrap(),
            b"layer"
        );
        assert!(xattr(&root.join("etc/tool"), "security.capability").is_some());

        assert_eq!(
            fs::read_link(root.join("etc/link")).unwrap(),
            Path::new("tool")
        );
        let secret = fs::metadata(root.join("secret")).unwrap();
        assert_eq!(secret.mode() & 0o7777, 0o1700, "sticky dir mode applied");
        assert_eq!(
            secret.mtime(),
            MTIME as i64,
            "dir mtime applied after contents"
        );
        assert_eq!(
            fs::read(root.join("deep/a/b/file")).unwrap(),
            b"implicit parents"
        );
        assert_eq!(
            fs::metadata(root.join("deep/a")).unwrap().mode() & 0o7777,
            0o755
        );
        let fifo = fs::symlink_metadata(root.join("run/fifo")).unwrap();
        assert!(fifo.file_type().is_fifo());
        assert_eq!(fifo.mode() & 0o7777, 0o620);
        let null = fs::symlink_metadata(root.join("dev/null")).unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), rustix::fs::makedev(1, 3));
        assert_eq!(null.mode() & 0o7777, 0o666);
        let lp = fs::symlink_metadata(root.join("dev/loop9")).unwrap();
        assert!(lp.file_type().is_block_device());
        assert_eq!(lp.rdev(), rustix::fs::makedev(7, 9));
    }

    #[test]
    fn whiteouts_become_overlay_whiteouts_and_opaque_dirs() {
        let s = scratch();
        let mut layer = Layer::new();
        layer
            .dir("a/", 0o755)
            .file("a/.wh.gone", 0o644, b"")
            .file("b/.wh..wh..opq", 0o644, b"")
            .file(".wh.top", 0o644, b"")
            .file("a/.wh..wh.plnk", 0o644, b"")
            // A whiteout never hides what its own layer wrote.
            .file("a/kept", 0o644, b"kept")
            .file("a/.wh.kept", 0o644, b"")
            // A whiteout then a dir: the dir is new, so it is opaque.
            .file(".wh.fresh", 0o644, b"")
            .dir("fresh/", 0o755);
        unpack(&mut layer, &s.layer).unwrap();
        for hidden in ["a/gone", "top"] {
            let m = fs::symlink_metadata(s.layer.join(hidden)).unwrap();
            assert!(m.file_type().is_char_device(), "{hidden}");
            assert_eq!(m.rdev(), 0, "{hidden}");
        }
        assert!(!s.layer.join("a/.wh.gone").exists());
        assert!(!s.layer.join(".wh.top").exists());
        assert!(!s.layer.join("a/.wh..wh.plnk").exists());
        assert!(!s.layer.join("b/.wh..wh..opq").exists());
        assert!(s.layer.join("b").is_dir());
        assert_eq!(xattr(&s.layer.join("b"), OPAQUE_XATTR).unwrap(), b"y");
        assert!(xattr(&s.layer.join("a"), OPAQUE_XATTR).is_none());
        assert_eq!(fs::read(s.layer.join("a/kept")).unwrap(), b"kept");
        assert!(s.layer.join("fresh").is_dir());
        assert_eq!(xattr(&s.layer.join("fresh"), OPAQUE_XATTR).unwrap(), b"y");
    }

    #[test]
    fn refuses_dotdot_paths() {
        let s = scratch();
        let err = unpack(Layer::new().file("../escape", 0o644, b"x"), &s.layer).unwrap_err();
        assert_eq!(refused_path(err), "../escape");
        let err = unpack(Layer::new().file("a/../../escape", 0o644, b"x"), &s.layer).unwrap_err();
        assert!(err.to_string().contains("a/../../escape"), "{err}");
        assert!(err.to_string().contains(".."), "{err}");
        assert!(outside_is_empty(&s));
    }

    #[test]
    fn refuses_absolute_paths() {
        let s = scratch();
        let abs = format!("{}/abs", s.outside.display());
        let err = unpack(Layer::new().file(&abs, 0o644, b"x"), &s.layer).unwrap_err();
        assert!(err.to_string().contains("absolute"), "{err}");
        assert_eq!(refused_path(err), abs);
        assert!(outside_is_empty(&s));
    }

    #[test]
    fn refuses_writes_through_an_absolute_symlink() {
        let s = scratch();
        let target = s.outside.to_str().unwrap();
        let err = unpack(
            Layer::new()
                .symlink("evil", target)
                .file("evil/pwned", 0o644, b"x"),
            &s.layer,
        )
        .unwrap_err();
        assert!(err.to_string().contains("outside the layer"), "{err}");
        assert_eq!(refused_path(err), "evil/pwned");
        assert!(outside_is_empty(&s));
        // Directories through it are refused too.
        let s = scratch();
        let target = s.outside.to_str().unwrap();
        let err = unpack(
            Layer::new().symlink("evil", target).dir("evil/sub/", 0o755),
            &s.layer,
        )
        .unwrap_err();
        assert_eq!(refused_path(err), "evil/sub/");
        assert!(outside_is_empty(&s));
    }

    #[test]
    fn refuses_writes_through_relative_symlinks_and_chains() {
        let s = scratch();
        let err = unpack(
            Layer::new()
                .symlink("up", "../outside")
                .file("up/pwned", 0o644, b"x"),
            &s.layer,
        )
        .unwrap_err();
        assert_eq!(refused_path(err), "up/pwned");
        let err = unpack(
            Layer::new()
                .dir("d/", 0o755)
                .symlink("d/up", "../../../../../../..")
                .symlink("chain", "d/up")
                .file("chain/tmp/pwned", 0o644, b"x"),
            &s.layer,
        )
        .unwrap_err();
        assert_eq!(refused_path(err), "chain/tmp/pwned");
        assert!(outside_is_empty(&s));
    }

    #[test]
    fn dangling_symlinks_do_not_create_parents_outside() {
        let s = scratch();
        let abs = s.outside.join("newdir");
        for target in ["../outside/newdir", abs.to_str().unwrap()] {
            let dest = s.layer.join(if target.starts_with('/') {
                "abs"
            } else {
                "rel"
            });
            fs::create_dir(&dest).unwrap();
            let err = unpack(
                Layer::new()
                    .symlink("dang", target)
                    .file("dang/sub/file", 0o644, b"x"),
                &dest,
            )
            .unwrap_err();
            assert_eq!(refused_path(err), "dang/sub/file");
        }
        assert!(outside_is_empty(&s));
    }

    #[test]
    fn old_style_trailing_slash_entries_are_directories() {
        let s = scratch();
        let mut h = header(T::Regular, "olddir/", "", 0o751, 0);
        h.as_old_mut().linkflag = [0];
        unpack(
            Layer::new().add(h, b"").file("olddir/f", 0o644, b"x"),
            &s.layer,
        )
        .unwrap();
        assert_eq!(
            fs::metadata(s.layer.join("olddir")).unwrap().mode() & 0o7777,
            0o751
        );
    }

    #[test]
    fn a_file_replacing_an_outside_symlink_does_not_write_through_it() {
        let s = scratch();
        let victim = s.outside.join("victim");
        fs::write(&victim, b"original").unwrap();
        unpack(
            Layer::new()
                .symlink("f", victim.to_str().unwrap())
                .file("f", 0o644, b"new"),
            &s.layer,
        )
        .unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"original");
        assert_eq!(fs::read(s.layer.join("f")).unwrap(), b"new");
    }

    #[test]
    fn symlinks_pointing_outside_are_created_as_links() {
        let s = scratch();
        unpack(
            Layer::new()
                .symlink("etc-passwd", "/etc/passwd")
                .symlink("up", "../../.."),
            &s.layer,
        )
        .unwrap();
        assert_eq!(
            fs::read_link(s.layer.join("etc-passwd")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert_eq!(
            fs::read_link(s.layer.join("up")).unwrap(),
            Path::new("../../..")
        );
    }

    #[test]
    fn refuses_hard_links_outside_or_to_unextracted_paths() {
        let s = scratch();
        fs::write(s.outside.join("x"), b"secret").unwrap();
        let cases: Vec<(Layer, &str)> = vec![
            (
                {
                    let mut l = Layer::new();
                    l.hardlink("pw", "/etc/passwd");
                    l
                },
                "absolute",
            ),
            (
                {
                    let mut l = Layer::new();
                    l.hardlink("x", "../outside/x");
                    l
                },
                "..",
            ),
            (
                {
                    let mut l = Layer::new();
                    l.hardlink("x", "../../x");
                    l
                },
                "..",
            ),
            (
                {
                    let mut l = Layer::new();
                    l.symlink("evil", s.outside.to_str().unwrap())
                        .hardlink("x", "evil/x");
                    l
                },
                "outside the layer",
            ),
            (
                {
                    let mut l = Layer::new();
                    l.hardlink("x", "missing");
                    l
                },
                "not extracted",
            ),
            (
                {
                    let mut l = Layer::new();
                    l.hardlink("x", "no/such/dir");
                    l
                },
                "not extracted",
            ),
        ];
        for (mut layer, why) in cases {
            let dest = s.layer.join(format!("case-{}", why.len()));
            let _ = fs::remove_dir_all(&dest);
            fs::create_dir(&dest).unwrap();
            let err = unpack(&mut layer, &dest).unwrap_err();
            assert!(err.to_string().contains(why), "{why}: {err}");
            assert!(matches!(err, UnpackError::Refused { .. }), "{err:?}");
        }
        assert_eq!(fs::read(s.outside.join("x")).unwrap(), b"secret");
        assert_eq!(
            fs::symlink_metadata(s.outside.join("x")).unwrap().nlink(),
            1
        );
    }

    #[test]
    fn later_entries_replace_earlier_ones() {
        let s = scratch();
        let mut layer = Layer::new();
        layer
            .file("f", 0o644, b"one")
            .file("f", 0o600, b"two")
            .file("x", 0o644, b"file first")
            .dir("x/", 0o750)
            .file("x/y", 0o644, b"child")
            .dir("d/", 0o700)
            .dir("d/sub/", 0o700)
            .file("d/sub/z", 0o644, b"gone")
            .file("d", 0o644, b"dir replaced by a file")
            .symlink("s", "/etc")
            .dir("s/", 0o755)
            .dir("again/", 0o700)
            .dir("again/", 0o711);
        unpack(&mut layer, &s.layer).unwrap();
        let root = &s.layer;
        assert_eq!(fs::read(root.join("f")).unwrap(), b"two");
        assert_eq!(fs::metadata(root.join("f")).unwrap().mode() & 0o7777, 0o600);
        assert!(root.join("x").is_dir());
        assert_eq!(fs::metadata(root.join("x")).unwrap().mode() & 0o7777, 0o750);
        assert_eq!(fs::read(root.join("x/y")).unwrap(), b"child");
        assert_eq!(fs::read(root.join("d")).unwrap(), b"dir replaced by a file");
        let sm = fs::symlink_metadata(root.join("s")).unwrap();
        assert!(sm.is_dir(), "the symlink was replaced, not followed");
        assert_eq!(
            fs::metadata(root.join("again")).unwrap().mode() & 0o7777,
            0o711
        );
    }

    #[test]
    fn refuses_absurd_paths() {
        let s = scratch();
        let long = "a/".repeat(2100) + "f";
        let err = unpack(
            Layer::new()
                .pax(&[("path", long.as_bytes())])
                .file("short", 0o644, b"x"),
            &s.layer,
        )
        .unwrap_err();
        assert!(err.to_string().contains("longer than 4096"), "{err}");
        let long_target = "t".repeat(5000);
        let err = unpack(
            Layer::new()
                .pax(&[("linkpath", long_target.as_bytes())])
                .symlink("l", "short"),
            &s.layer,
        )
        .unwrap_err();
        assert!(matches!(err, UnpackError::Refused { .. }), "{err:?}");
    }

    #[test]
    fn refuses_too_many_entries() {
        let s = scratch();
        let mut layer = Layer::new();
        for i in 0..4 {
            layer.file(&format!("f{i}"), 0o644, b"");
        }
        let err = unpack_with_limit(io::Cursor::new(layer.bytes()), &s.layer, 3).unwrap_err();
        assert!(
            matches!(err, UnpackError::TooManyEntries { max: 3 }),
            "{err:?}"
        );
        assert!(err.to_string().contains("more than 3 entries"), "{err}");
    }

    #[test]
    fn overlay_xattrs_from_the_layer_are_ignored() {
        let s = scratch();
        let mut layer = Layer::new();
        layer
            .pax(&[("SCHILY.xattr.trusted.overlay.redirect", b"/elsewhere")])
            .dir("d/", 0o755);
        unpack(&mut layer, &s.layer).unwrap();
        assert!(xattr(&s.layer.join("d"), "trusted.overlay.redirect").is_none());
    }

    #[test]
    fn missing_destination_is_a_clear_error() {
        let s = scratch();
        let err = unpack(Layer::new().file("f", 0o644, b"x"), &s.layer.join("nope")).unwrap_err();
        assert!(matches!(err, UnpackError::Dest { .. }), "{err:?}");
    }
}
