//! Turning a container's writable layer (an overlayfs upper dir) into an
//! OCI layer: a deterministic tar (entries sorted by path, directories
//! before their contents, hard links kept), gzip-compressed into a temp
//! blob of the store while both digests are computed, so the layer is never
//! held in memory. Overlay whiteouts become OCI ones: a character device
//! 0/0 `dir/name` is written as an empty `dir/.wh.name`, a directory with
//! `trusted.overlay.opaque=y` gets a `dir/.wh..wh..opq` entry after itself.
//!
//! The empty `/etc/hostname`, `/etc/hosts` and `/etc/resolv.conf` files the
//! runtime creates as mount points are left out, as docker's init layer
//! keeps them out of its commits. Xattrs other than overlay's are not
//! carried (no PAX records): file capabilities set inside a container are
//! lost on commit.
//!
//! Called by the daemon's `commit`; calls `store` (temp blob) and std fs.
//! Upper dirs made with `redirect_dir` or `metacopy` (whose content lives
//! partly in the lower layers) are refused: the runner mounts without them.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::store::{Store, StoreError};

const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const REDIRECT_XATTR: &str = "trusted.overlay.redirect";
const METACOPY_XATTR: &str = "trusted.overlay.metacopy";
const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// Mount points the runtime makes in the upper dir for the daemon's bind
/// mounts (docker keeps them in its uncommitted init layer): left out when
/// they are still the empty files the runtime created.
const RUNTIME_MOUNTPOINTS: [&str; 3] = ["etc/hostname", "etc/hosts", "etc/resolv.conf"];

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: {detail}", path.display())]
    Unsupported { path: PathBuf, detail: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ExportError {
    let path = path.to_path_buf();
    move |source| ExportError::Io { op, path, source }
}

/// A written layer blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportedLayer {
    /// Digest of the gzip blob (the manifest's layer digest).
    pub digest: String,
    /// Digest of the uncompressed tar (the config's diff_id).
    pub diff_id: String,
    /// Bytes of the gzip blob.
    pub size: u64,
}

/// Writes `upper` as a gzip layer blob into `store` and returns its
/// digests. Nothing is left behind on failure.
pub fn export_layer(store: &Store, upper: &Path) -> Result<ExportedLayer, ExportError> {
    let blob = store.begin_blob()?;
    let compressed = HashingWriter::new(blob);
    let gz = flate2::write::GzEncoder::new(compressed, flate2::Compression::default());
    let mut tar_out = HashingWriter::new(gz);
    write_tar(upper, &mut tar_out)?;
    let tmp = Path::new("layer blob");
    let (gz, diff_hash, _) = tar_out.finish();
    let compressed = gz.finish().map_err(io_err("compressing", tmp))?;
    let (mut blob, hash, size) = compressed.finish();
    blob.flush().map_err(io_err("writing", tmp))?;
    let digest = format!("sha256:{}", hex::encode(hash));
    blob.commit(&digest)?;
    Ok(ExportedLayer {
        digest,
        diff_id: format!("sha256:{}", hex::encode(diff_hash)),
        size,
    })
}

/// Writes the tar of `upper` (see the module doc) to `out`.
pub fn write_tar(upper: &Path, out: &mut dyn Write) -> Result<(), ExportError> {
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    walk(upper, Path::new(""), &mut builder, &mut links)?;
    builder
        .into_inner()
        .and_then(|w| w.flush())
        .map_err(io_err("writing the tar of", upper))?;
    Ok(())
}

fn walk(
    root: &Path,
    rel: &Path,
    b: &mut tar::Builder<&mut dyn Write>,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<(), ExportError> {
    let dir = root.join(rel);
    let mut names: Vec<_> = fs::read_dir(&dir)
        .map_err(io_err("reading", &dir))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(io_err("reading", &dir))?;
    // Byte order of names: the same tree always gives the same tar.
    names.sort_by(|a, b| a.as_encoded_bytes().cmp(b.as_encoded_bytes()));
    for name in names {
        let path = dir.join(&name);
        let entry = rel.join(&name);
        let meta = fs::symlink_metadata(&path).map_err(io_err("inspecting", &path))?;
        let ft = meta.file_type();
        if ft.is_file()
            && meta.len() == 0
            && RUNTIME_MOUNTPOINTS.iter().any(|m| entry == Path::new(m))
        {
            continue;
        }
        check_overlay_xattrs(&path)?;
        if ft.is_char_device() && meta.rdev() == 0 {
            let mut wh_name = std::ffi::OsString::from(WHITEOUT_PREFIX);
            wh_name.push(&name);
            append_empty(b, &rel.join(wh_name), &meta)?;
            continue;
        }
        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
        if ft.is_dir() {
            header.set_size(0);
            b.append_data(&mut header, &entry, io::empty())
                .map_err(io_err("archiving", &path))?;
            if is_opaque(&path) {
                append_empty(b, &entry.join(OPAQUE_MARKER), &meta)?;
            }
            walk(root, &entry, b, links)?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&path).map_err(io_err("reading", &path))?;
            header.set_size(0);
            b.append_link(&mut header, &entry, &target)
                .map_err(io_err("archiving", &path))?;
        } else if ft.is_file() {
            if meta.nlink() > 1 {
                let key = (meta.dev(), meta.ino());
                if let Some(first) = links.get(&key) {
                    header.set_entry_type(tar::EntryType::Link);
                    header.set_size(0);
                    b.append_link(&mut header, &entry, first)
                        .map_err(io_err("archiving", &path))?;
                    continue;
                }
                links.insert(key, entry.clone());
            }
            let f = fs::File::open(&path).map_err(io_err("opening", &path))?;
            // The size in the header is the one read now; a file a running
            // container grows meanwhile is cut at that size.
            b.append_data(&mut header, &entry, f.take(meta.len()))
                .map_err(io_err("archiving", &path))?;
        } else {
            // Devices, fifos: the header carries all there is.
            header.set_size(0);
            b.append_data(&mut header, &entry, io::empty())
                .map_err(io_err("archiving", &path))?;
        }
    }
    Ok(())
}

/// An empty regular file entry (a whiteout marker) with `meta`'s times.
fn append_empty(
    b: &mut tar::Builder<&mut dyn Write>,
    entry: &Path,
    meta: &fs::Metadata,
) -> Result<(), ExportError> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(0);
    h.set_mtime(meta.mtime().max(0) as u64);
    b.append_data(&mut h, entry, io::empty())
        .map_err(io_err("archiving", entry))
}

fn xattr(path: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = [0u8; 256];
    match rustix::fs::lgetxattr(path, name, &mut buf) {
        Ok(n) => Some(buf[..n.min(buf.len())].to_vec()),
        Err(_) => None,
    }
}

fn is_opaque(dir: &Path) -> bool {
    xattr(dir, OPAQUE_XATTR).is_some_and(|v| v == b"y")
}

fn check_overlay_xattrs(path: &Path) -> Result<(), ExportError> {
    for (x, what) in [
        (REDIRECT_XATTR, "redirect_dir"),
        (METACOPY_XATTR, "metacopy"),
    ] {
        if xattr(path, x).is_some() {
            return Err(ExportError::Unsupported {
                path: path.to_path_buf(),
                detail: format!("made by an overlay mount with {what} on; cannot be committed"),
            });
        }
    }
    Ok(())
}

/// Passes bytes through, hashing and counting them.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    fn finish(self) -> (W, [u8; 32], u64) {
        (self.inner, self.hasher.finalize().into(), self.count)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(tar_bytes: &[u8]) -> Vec<(String, tar::EntryType, u64)> {
        let mut a = tar::Archive::new(tar_bytes);
        a.entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    e.header().entry_type(),
                    e.size(),
                )
            })
            .collect()
    }

    fn tar_of(dir: &Path) -> Vec<u8> {
        let mut out = Vec::new();
        write_tar(dir, &mut out).unwrap();
        out
    }

    #[test]
    fn the_tar_is_sorted_and_deterministic() {
        let t = tempfile::tempdir().unwrap();
        for n in ["zeta", "alpha", "mid"] {
            fs::write(t.path().join(n), n).unwrap();
        }
        fs::create_dir(t.path().join("dir")).unwrap();
        fs::write(t.path().join("dir/b"), b"bb").unwrap();
        fs::write(t.path().join("dir/a"), b"a").unwrap();
        std::os::unix::fs::symlink("alpha", t.path().join("link")).unwrap();
        fs::hard_link(t.path().join("mid"), t.path().join("mid2")).unwrap();
        let one = tar_of(t.path());
        let two = tar_of(t.path());
        assert_eq!(one, two);
        let names: Vec<_> = entries(&one)
            .into_iter()
            .map(|(n, ty, _)| (n, ty))
            .collect();
        use tar::EntryType as T;
        assert_eq!(
            names,
            [
                ("alpha".into(), T::Regular),
                ("dir".into(), T::Directory),
                ("dir/a".into(), T::Regular),
                ("dir/b".into(), T::Regular),
                ("link".into(), T::Symlink),
                ("mid".into(), T::Regular),
                ("mid2".into(), T::Link),
                ("zeta".into(), T::Regular),
            ]
        );
    }

    #[test]
    fn runtime_mount_points_are_left_out() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir(t.path().join("etc")).unwrap();
        fs::write(t.path().join("etc/hosts"), b"").unwrap();
        fs::write(t.path().join("etc/resolv.conf"), b"").unwrap();
        fs::write(t.path().join("etc/hostname"), b"kept: not empty").unwrap();
        fs::write(t.path().join("hosts"), b"").unwrap();
        let names: Vec<_> = entries(&tar_of(t.path()))
            .into_iter()
            .map(|(n, _, _)| n)
            .collect();
        assert_eq!(names, ["etc", "etc/hostname", "hosts"]);
    }

    #[test]
    fn overlay_whiteouts_become_oci_whiteouts() {
        // mknod of a 0/0 char device and trusted.* xattrs need root (the
        // e2e tests run as root, as does this suite on the CI host).
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        fs::create_dir(root.join("etc")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            root.join("etc/gone"),
            rustix::fs::FileType::CharacterDevice,
            rustix::fs::Mode::from_raw_mode(0),
            0,
        )
        .expect("mknod needs root");
        fs::create_dir(root.join("opaque")).unwrap();
        fs::write(root.join("opaque/new"), b"n").unwrap();
        rustix::fs::setxattr(
            root.join("opaque"),
            OPAQUE_XATTR,
            b"y",
            rustix::fs::XattrFlags::empty(),
        )
        .expect("trusted xattrs need root");
        let names = entries(&tar_of(root));
        use tar::EntryType as T;
        assert_eq!(
            names,
            [
                ("etc".into(), T::Directory, 0),
                ("etc/.wh.gone".into(), T::Regular, 0),
                ("opaque".into(), T::Directory, 0),
                ("opaque/.wh..wh..opq".into(), T::Regular, 0),
                ("opaque/new".into(), T::Regular, 1),
            ]
        );
    }

    #[test]
    fn export_writes_a_verified_blob_and_round_trips_through_unpack() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path().join("store")).unwrap().without_sync();
        let upper = t.path().join("upper");
        fs::create_dir_all(upper.join("d")).unwrap();
        fs::write(upper.join("d/file"), b"hello").unwrap();
        let l = export_layer(&store, &upper).unwrap();
        let again = export_layer(&store, &upper).unwrap();
        assert_eq!(l, again, "same tree, same digests");
        let blob = fs::read(store.blob_path(&l.digest).unwrap()).unwrap();
        assert_eq!(blob.len() as u64, l.size);
        assert_eq!(
            format!("sha256:{}", hex::encode(Sha256::digest(&blob))),
            l.digest
        );
        let mut tar_bytes = Vec::new();
        flate2::read::GzDecoder::new(&blob[..])
            .read_to_end(&mut tar_bytes)
            .unwrap();
        assert_eq!(
            format!("sha256:{}", hex::encode(Sha256::digest(&tar_bytes))),
            l.diff_id
        );
        let dest = t.path().join("unpacked");
        fs::create_dir(&dest).unwrap();
        super::super::unpack::unpack_layer(&tar_bytes[..], &dest).unwrap();
        assert_eq!(fs::read(dest.join("d/file")).unwrap(), b"hello");
        // No temp file left beside the blobs.
        let leftovers = fs::read_dir(t.path().join("store/blobs/sha256"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(".tmp-")
            })
            .count();
        assert_eq!(leftovers, 0);
    }
}
