//! The runner's content-addressed image store on local disk.
//!
//! Called by `pull` (to write) and by the bundle/runtime side (to find layer
//! dirs); calls only std fs. Layout under the root:
//!
//! ```text
//! blobs/sha256/<hex>     manifests, indexes and configs, exactly the bytes
//!                        that hash to <hex>
//! layers/<hex>/diff/     an unpacked layer (the overlayfs lower dir); <hex>
//!                        is the layer's compressed digest from the manifest
//! layers/<hex>/link      the layer's short id (10 base32 chars)
//! l/<id> -> ../layers/<hex>/diff
//!                        short symlink per layer, for overlay lowerdir lists
//! tmp/                   work area: partial blobs and layers; emptied on open
//! ```
//!
//! Invariants: a path under a digest is only ever created by `rename(2)`
//! from a complete, verified temp file or dir in the same filesystem, so
//! nothing partial is ever visible under a digest; a crash leaves at most
//! garbage under `tmp/` (removed by the next [`Store::open`]) or a dangling
//! `l/` symlink.
//!
//! Why the short links: the overlay mount options must fit one page (4096
//! bytes). With absolute paths such as
//! `/var/lib/wharf-runner/images/layers/<64 hex>/diff` a hundred layers take
//! ~10 KB; with the mount done from the store root (`chdir` to
//! [`Store::root`], as docker's overlay2 does) and `lowerdir=l/<id>:l/<id>...`
//! each entry costs 13 bytes, so 100 layers take 1.3 KB. Even absolute
//! `ROOT/l/<id>` entries fit for 100 layers when the root is shorter than
//! ~25 characters.
//!
//! Layers are keyed by their compressed digest (known from the manifest
//! before download), so a present layer is skipped without fetching a byte.
//! The compressed layer blob itself is not kept once unpacked.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest as _, Sha256};

use super::reference::validate_digest;

const SHORT_ID_LEN: usize = 10;
const BASE32: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    BadDigest(String),
    #[error("content does not match digest {digest} (it hashes to {actual})")]
    DigestMismatch { digest: String, actual: String },
    #[error("layer {0} is not in the store")]
    MissingLayer(String),
    #[error("blob {0} is not in the store")]
    MissingBlob(String),
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io { op, path, source }
}

/// The store. Cheap to clone paths out of; all methods are blocking std fs
/// calls (call them from `spawn_blocking` in async code when they may touch
/// much data).
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    sync: bool,
}

impl Store {
    /// Opens (creating if needed) the store at `root` and removes leftovers
    /// of interrupted pulls from `tmp/`. Only one process may use a store
    /// root at a time (the runner daemon).
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        for d in ["blobs/sha256", "layers", "l", "tmp"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(io_err("create", &p))?;
        }
        let tmp = root.join("tmp");
        for e in fs::read_dir(&tmp).map_err(io_err("read", &tmp))? {
            let e = e.map_err(io_err("read", &tmp))?;
            remove_any(&e.path()).map_err(io_err("remove", &e.path()))?;
        }
        // Partial blob files live beside the blobs (same dir for rename).
        let blobs = root.join("blobs/sha256");
        for e in fs::read_dir(&blobs).map_err(io_err("read", &blobs))? {
            let e = e.map_err(io_err("read", &blobs))?;
            if e.file_name().to_string_lossy().starts_with(".tmp-") {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok(Self { root, sync: true })
    }

    /// Skips the `fsync`/`syncfs` calls that make committed content survive
    /// a power cut. For tests only: a crash may then leave a committed
    /// layer with empty files.
    pub fn without_sync(mut self) -> Self {
        self.sync = false;
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, StoreError> {
        Ok(self.root.join("blobs/sha256").join(hex_of(digest)?))
    }

    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).is_ok_and(|p| p.is_file())
    }

    /// Stores `bytes` under `digest`: checked, written to a temp file in the
    /// same dir, synced, then renamed into place.
    pub fn put_blob(&self, digest: &str, bytes: &[u8]) -> Result<PathBuf, StoreError> {
        let path = self.blob_path(digest)?;
        let actual = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
        if actual != digest {
            return Err(StoreError::DigestMismatch {
                digest: digest.to_string(),
                actual,
            });
        }
        if path.is_file() {
            return Ok(path);
        }
        let dir = self.root.join("blobs/sha256");
        let tmp = dir.join(format!(".tmp-{}", unique_name()));
        let write = || -> io::Result<()> {
            let mut f = fs::File::create_new(&tmp)?;
            f.write_all(bytes)?;
            if self.sync { f.sync_all() } else { Ok(()) }
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(io_err("write", &tmp)(e));
        }
        fs::rename(&tmp, &path).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            io_err("rename into", &path)(e)
        })?;
        if self.sync {
            sync_dir(&dir).map_err(io_err("sync", &dir))?;
        }
        Ok(path)
    }

    /// Reads a stored blob, re-checking its digest (blobs here are small:
    /// manifests and configs).
    pub fn read_blob(&self, digest: &str) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(digest)?;
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::MissingBlob(digest.to_string()));
            }
            Err(e) => return Err(io_err("read", &path)(e)),
        };
        let actual = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        if actual != digest {
            return Err(StoreError::DigestMismatch {
                digest: digest.to_string(),
                actual,
            });
        }
        Ok(bytes)
    }

    /// Starts writing a large blob (a compressed layer) without holding it
    /// in memory: a temp file beside the blobs, renamed into place by
    /// [`BlobTemp::commit`] once its digest is known; dropped, it is removed.
    pub fn begin_blob(&self) -> Result<BlobTemp, StoreError> {
        let dir = self.root.join("blobs/sha256");
        let path = dir.join(format!(".tmp-{}", unique_name()));
        let file = fs::File::create_new(&path).map_err(io_err("create", &path))?;
        Ok(BlobTemp {
            file: Some(file),
            path,
            dir,
            sync: self.sync,
            done: false,
        })
    }

    /// Opens a stored blob for streaming (not re-verified: large layer
    /// blobs are checked by whoever reads them, e.g. the registry).
    pub fn open_blob(&self, digest: &str) -> Result<(fs::File, u64), StoreError> {
        let path = self.blob_path(digest)?;
        let f = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::MissingBlob(digest.to_string()));
            }
            Err(e) => return Err(io_err("open", &path)(e)),
        };
        let len = f.metadata().map_err(io_err("stat", &path))?.len();
        Ok((f, len))
    }

    fn layer_dir(&self, digest: &str) -> Result<PathBuf, StoreError> {
        Ok(self.root.join("layers").join(hex_of(digest)?))
    }

    /// Whether the layer is unpacked here (complete: the dir only appears by
    /// rename once unpacking and verification succeeded).
    pub fn has_layer(&self, digest: &str) -> bool {
        self.layer_dir(digest)
            .is_ok_and(|d| d.join("diff").is_dir())
    }

    /// The unpacked layer's root dir (`layers/<hex>/diff`).
    pub fn layer_path(&self, digest: &str) -> Result<PathBuf, StoreError> {
        let p = self.layer_dir(digest)?.join("diff");
        if p.is_dir() {
            Ok(p)
        } else {
            Err(StoreError::MissingLayer(digest.to_string()))
        }
    }

    /// The layer's short link, relative to [`Store::root`] (`l/<id>`), for
    /// overlay lowerdir lists; recreates the symlink if a crash lost it.
    pub fn layer_link(&self, digest: &str) -> Result<PathBuf, StoreError> {
        let dir = self.layer_dir(digest)?;
        let link_file = dir.join("link");
        let id = match fs::read_to_string(&link_file) {
            Ok(id) => id.trim().to_string(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::MissingLayer(digest.to_string()));
            }
            Err(e) => return Err(io_err("read", &link_file)(e)),
        };
        if id.len() != SHORT_ID_LEN || !id.bytes().all(|b| BASE32.contains(&b)) {
            return Err(io_err("read", &link_file)(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad short id {id:?}"),
            )));
        }
        let rel = PathBuf::from("l").join(&id);
        let abs = self.root.join(&rel);
        let target = Path::new("../layers").join(hex_of(digest)?).join("diff");
        match fs::read_link(&abs) {
            Ok(t) if t == target => {}
            Ok(_) | Err(_) => {
                let _ = fs::remove_file(&abs);
                std::os::unix::fs::symlink(&target, &abs).map_err(io_err("symlink", &abs))?;
            }
        }
        Ok(rel)
    }

    /// Starts writing a layer: a fresh temp dir under `tmp/` whose `diff/`
    /// receives the unpacked files. Dropping the result without
    /// [`LayerTemp::commit`] removes it.
    pub fn begin_layer(&self, digest: &str) -> Result<LayerTemp, StoreError> {
        let final_dir = self.layer_dir(digest)?;
        let dir = self
            .root
            .join("tmp")
            .join(format!("layer-{}", unique_name()));
        fs::create_dir(&dir).map_err(io_err("create", &dir))?;
        let diff = dir.join("diff");
        if let Err(e) = fs::create_dir(&diff) {
            let _ = fs::remove_dir_all(&dir);
            return Err(io_err("create", &diff)(e));
        }
        Ok(LayerTemp {
            root: self.root.clone(),
            sync: self.sync,
            digest: digest.to_string(),
            dir,
            final_dir,
            done: false,
        })
    }
}

/// A layer being unpacked, not yet visible in the store.
#[derive(Debug)]
pub struct LayerTemp {
    root: PathBuf,
    sync: bool,
    digest: String,
    dir: PathBuf,
    final_dir: PathBuf,
    done: bool,
}

impl LayerTemp {
    /// Where the layer's files go.
    pub fn diff_dir(&self) -> PathBuf {
        self.dir.join("diff")
    }

    /// Makes the layer visible: reserves a short id (symlink in `l/`), then
    /// renames the temp dir to `layers/<hex>`. If another pull committed the
    /// same layer first, this one is discarded and the existing one kept.
    /// Returns the layer's `diff` dir.
    pub fn commit(mut self) -> Result<PathBuf, StoreError> {
        let hex = hex_of(&self.digest)?;
        let target = Path::new("../layers").join(hex).join("diff");
        let mut link = None;
        for _ in 0..16 {
            let id = short_id();
            let path = self.root.join("l").join(&id);
            match std::os::unix::fs::symlink(&target, &path) {
                Ok(()) => {
                    link = Some((id, path));
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err("symlink", &path)(e)),
            }
        }
        let (id, link_path) = link.ok_or_else(|| {
            io_err("symlink", &self.root.join("l"))(io::Error::other("no free short id"))
        })?;
        let link_file = self.dir.join("link");
        if let Err(e) = fs::write(&link_file, id.as_bytes()) {
            let _ = fs::remove_file(&link_path);
            return Err(io_err("write", &link_file)(e));
        }
        // Every file of the layer on disk before its name appears: one
        // syncfs(2) instead of an fsync per file.
        if self.sync
            && let Err(e) = fs::File::open(&self.dir)
                .and_then(|d| rustix::fs::syncfs(&d).map_err(io::Error::from))
        {
            let _ = fs::remove_file(&link_path);
            return Err(io_err("sync", &self.dir)(e));
        }
        match fs::rename(&self.dir, &self.final_dir) {
            Ok(()) => {
                self.done = true;
                if self.sync {
                    let layers = self.root.join("layers");
                    sync_dir(&layers).map_err(io_err("sync", &layers))?;
                }
                Ok(self.final_dir.join("diff"))
            }
            Err(e) => {
                let _ = fs::remove_file(&link_path);
                if self.final_dir.join("diff").is_dir() {
                    // Lost a race with an identical layer: keep theirs.
                    Ok(self.final_dir.join("diff"))
                } else {
                    Err(io_err("rename into", &self.final_dir)(e))
                }
            }
        }
    }
}

impl Drop for LayerTemp {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

/// A blob being written, not yet visible under a digest.
#[derive(Debug)]
pub struct BlobTemp {
    file: Option<fs::File>,
    path: PathBuf,
    dir: PathBuf,
    sync: bool,
    done: bool,
}

impl Write for BlobTemp {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.file.as_mut() {
            Some(f) => f.write(buf),
            None => Err(io::Error::other("blob already committed")),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.as_mut().map_or(Ok(()), |f| f.flush())
    }
}

impl BlobTemp {
    /// Makes the written bytes the blob `digest` (the caller hashed them
    /// while writing). An existing blob of that digest is kept.
    pub fn commit(mut self, digest: &str) -> Result<PathBuf, StoreError> {
        let final_path = self.dir.join(hex_of(digest)?);
        let file = self.file.take();
        if self.sync
            && let Some(f) = &file
        {
            f.sync_all().map_err(io_err("sync", &self.path))?;
        }
        drop(file);
        fs::rename(&self.path, &final_path).map_err(io_err("rename into", &final_path))?;
        self.done = true;
        if self.sync {
            sync_dir(&self.dir).map_err(io_err("sync", &self.dir))?;
        }
        Ok(final_path)
    }
}

impl Drop for BlobTemp {
    fn drop(&mut self) {
        if !self.done {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// The hex part of a sha256 digest, validated (so it is safe as a file name).
fn hex_of(digest: &str) -> Result<&str, StoreError> {
    validate_digest(digest).map_err(StoreError::BadDigest)?;
    Ok(&digest["sha256:".len()..])
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

fn remove_any(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    // /dev/urandom never blocks after boot and never runs dry; if it cannot
    // be read the time-and-counter part of unique_name still keeps names
    // apart, and short ids retry on collision.
    if let Ok(mut f) = fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut buf);
    }
    buf
}

/// A short id: 10 base32 characters (50 random bits).
fn short_id() -> String {
    let bytes = random_bytes::<SHORT_ID_LEN>();
    bytes
        .iter()
        .map(|b| BASE32[(*b & 31) as usize] as char)
        .collect()
}

/// A name unique within this store's temp areas.
fn unique_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{}-{n}-{}", std::process::id(), short_id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest_of(b: &[u8]) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(b)))
    }

    #[test]
    fn blobs_are_verified_and_written_atomically() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path()).unwrap().without_sync();
        let d = digest_of(b"config");
        assert!(!s.has_blob(&d));
        let e = s.put_blob(&d, b"other").unwrap_err();
        assert!(matches!(e, StoreError::DigestMismatch { .. }), "{e}");
        assert!(!s.has_blob(&d));
        // Nothing left behind, not even a temp file.
        assert_eq!(
            fs::read_dir(t.path().join("blobs/sha256")).unwrap().count(),
            0
        );
        s.put_blob(&d, b"config").unwrap();
        assert!(s.has_blob(&d));
        assert_eq!(s.read_blob(&d).unwrap(), b"config");
        // Tampered content on disk is caught on read.
        fs::write(s.blob_path(&d).unwrap(), b"tampered").unwrap();
        assert!(matches!(
            s.read_blob(&d),
            Err(StoreError::DigestMismatch { .. })
        ));
        assert!(matches!(
            s.read_blob(&digest_of(b"nope")),
            Err(StoreError::MissingBlob(_))
        ));
        assert!(matches!(
            s.blob_path("sha256:../../etc"),
            Err(StoreError::BadDigest(_))
        ));
    }

    #[test]
    fn layers_appear_only_when_committed() {
        let t = tempfile::tempdir().unwrap();
        // With the syncs on, as in production.
        let s = Store::open(t.path()).unwrap();
        let d = digest_of(b"layer");
        let tmp = s.begin_layer(&d).unwrap();
        fs::write(tmp.diff_dir().join("file"), b"x").unwrap();
        assert!(!s.has_layer(&d));
        assert!(matches!(s.layer_path(&d), Err(StoreError::MissingLayer(_))));
        let diff = tmp.commit().unwrap();
        assert!(s.has_layer(&d));
        assert_eq!(s.layer_path(&d).unwrap(), diff);
        assert_eq!(fs::read(diff.join("file")).unwrap(), b"x");
        assert_eq!(fs::read_dir(t.path().join("tmp")).unwrap().count(), 0);

        let link = s.layer_link(&d).unwrap();
        assert_eq!(link.as_os_str().len(), 2 + SHORT_ID_LEN);
        assert_eq!(fs::read(t.path().join(&link).join("file")).unwrap(), b"x");
        // A lost symlink is recreated.
        fs::remove_file(t.path().join(&link)).unwrap();
        assert_eq!(s.layer_link(&d).unwrap(), link);
        assert!(t.path().join(&link).join("file").is_file());
    }

    #[test]
    fn dropped_layers_leave_nothing() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path()).unwrap().without_sync();
        let d = digest_of(b"layer");
        {
            let tmp = s.begin_layer(&d).unwrap();
            fs::create_dir_all(tmp.diff_dir().join("a/b")).unwrap();
            fs::write(tmp.diff_dir().join("a/b/c"), b"x").unwrap();
        }
        assert!(!s.has_layer(&d));
        assert_eq!(fs::read_dir(t.path().join("tmp")).unwrap().count(), 0);
        assert_eq!(fs::read_dir(t.path().join("layers")).unwrap().count(), 0);
    }

    #[test]
    fn open_cleans_leftovers_of_a_crash() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path()).unwrap().without_sync();
        let tmp = s.begin_layer(&digest_of(b"x")).unwrap();
        fs::write(tmp.diff_dir().join("f"), b"x").unwrap();
        std::mem::forget(tmp); // as if the process died here
        fs::write(t.path().join("blobs/sha256/.tmp-1-2-x"), b"partial").unwrap();
        Store::open(t.path()).unwrap();
        assert_eq!(fs::read_dir(t.path().join("tmp")).unwrap().count(), 0);
        assert_eq!(
            fs::read_dir(t.path().join("blobs/sha256")).unwrap().count(),
            0
        );
    }

    #[test]
    fn a_second_commit_of_the_same_layer_keeps_the_first() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path()).unwrap().without_sync();
        let d = digest_of(b"layer");
        let a = s.begin_layer(&d).unwrap();
        let b = s.begin_layer(&d).unwrap();
        fs::write(a.diff_dir().join("who"), b"a").unwrap();
        fs::write(b.diff_dir().join("who"), b"b").unwrap();
        let pa = a.commit().unwrap();
        let pb = b.commit().unwrap();
        assert_eq!(pa, pb);
        assert_eq!(fs::read(pa.join("who")).unwrap(), b"a");
        assert_eq!(fs::read_dir(t.path().join("tmp")).unwrap().count(), 0);
        assert_eq!(fs::read_dir(t.path().join("l")).unwrap().count(), 1);
    }

    #[test]
    fn a_hundred_short_links_fit_one_page() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path()).unwrap().without_sync();
        let mut lowers = Vec::new();
        for i in 0..100u32 {
            let d = digest_of(&i.to_le_bytes());
            s.begin_layer(&d).unwrap().commit().unwrap();
            lowers.push(s.layer_link(&d).unwrap().to_string_lossy().into_owned());
        }
        let opt = format!("lowerdir={}", lowers.join(":"));
        assert!(opt.len() < 1500, "{}", opt.len());
    }
}
