//! Volumes: their catalog rows (`volumes`, `volume_users`), their data
//! directories `<root>/volumes/<name>/_data` (docker's layout), and the
//! mounts a container's `-v`/`--tmpfs` flags become at each start,
//! including docker's copy-up of the image's content into an empty volume.
//!
//! Calls `crate::volumes` (the flag grammar), `bundle` (mount shapes) and
//! `runtime::secure_join` (so a symlink in the image cannot point the
//! copy-up at the host); called by `containers` (create, start, rm,
//! inspect) and `http` (the `volume` commands).

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Mount, MountBuilder};
use serde_json::{Value, json};
use sqlx::SqlitePool;

use super::error::{Error, Result};
use crate::api::{CreateRequest, Volume, VolumeCreateRequest, VolumePruneReport};
use crate::volumes::{self as spec, Source, VolumeSpec};

/// The label docker puts on anonymous volumes.
const ANONYMOUS_LABEL: &str = "com.docker.volume.anonymous";
/// Most labels a volume may carry, and the longest label.
const MAX_LABELS: usize = 256;
const MAX_LABEL_BYTES: usize = 4096;

#[derive(Debug, Clone, sqlx::FromRow)]
struct Row {
    name: String,
    created_at: String,
    labels: String,
    anonymous: bool,
}

pub struct Volumes {
    dir: PathBuf,
    pool: SqlitePool,
}

fn internal(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::Internal(format!("{what}: {e}"))
}

fn no_such(name: &str) -> Error {
    Error::NotFound(format!("get {name}: no such volume"))
}

/// A random 64-hex volume name, as docker's anonymous volumes.
fn random_name() -> Result<String> {
    let mut bytes = [0u8; 32];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").map_err(internal("/dev/urandom".into()))?,
        &mut bytes,
    )
    .map_err(internal("/dev/urandom".into()))?;
    Ok(hex::encode(bytes))
}

impl Volumes {
    /// Opens `<root>/volumes` (created 0700: volume data is the containers').
    pub fn open(root: &Path, pool: SqlitePool) -> Result<Volumes> {
        let dir = root.join("volumes");
        std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)))
            .map_err(internal(format!("volumes dir {}", dir.display())))?;
        Ok(Volumes { dir, pool })
    }

    /// A volume's data directory (the name was checked by the caller).
    fn data(&self, name: &str) -> PathBuf {
        self.dir.join(name).join("_data")
    }

    fn to_api(&self, row: &Row) -> Volume {
        Volume {
            created_at: row.created_at.clone(),
            driver: "local".into(),
            labels: serde_json::from_str(&row.labels).unwrap_or_default(),
            mountpoint: self.data(&row.name).display().to_string(),
            name: row.name.clone(),
            options: None,
            scope: "local".into(),
        }
    }

    async fn row(&self, name: &str) -> Result<Option<Row>> {
        Ok(
            sqlx::query_as::<_, Row>("SELECT * FROM volumes WHERE name = ?")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Makes the volume (its directory, then its row) unless it exists.
    async fn ensure(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        anonymous: bool,
    ) -> Result<()> {
        spec::check_volume_name(name).map_err(|e| Error::BadRequest(e.to_string()))?;
        let data = self.data(name);
        std::fs::create_dir_all(&data).map_err(internal(format!("creating {}", data.display())))?;
        let created = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        sqlx::query(
            "INSERT OR IGNORE INTO volumes (name, created_at, labels, anonymous) VALUES (?, ?, ?, ?)",
        )
        .bind(name)
        .bind(created)
        .bind(serde_json::to_string(labels).map_err(Error::internal)?)
        .bind(anonymous)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// `volume create [NAME]`: docker answers with the existing volume when
    /// the name is taken.
    pub async fn create(&self, req: VolumeCreateRequest) -> Result<Volume> {
        let name = match req.name.filter(|n| !n.is_empty()) {
            Some(n) => n,
            None => random_name()?,
        };
        spec::check_volume_name(&name).map_err(|e| Error::BadRequest(e.to_string()))?;
        if let Some(driver) = req.driver.filter(|d| !d.is_empty() && d != "local") {
            return Err(Error::NotFound(format!(
                "create {name}: error looking up volume plugin {driver}: plugin \"{driver}\" not found"
            )));
        }
        if req.labels.len() > MAX_LABELS
            || req
                .labels
                .iter()
                .any(|(k, v)| k.is_empty() || k.len() + v.len() > MAX_LABEL_BYTES)
        {
            return Err(Error::BadRequest(format!("create {name}: invalid labels")));
        }
        self.ensure(&name, &req.labels, false).await?;
        tracing::info!(volume = %name, "volume created");
        self.inspect(&name).await
    }

    /// `volume ls`, by name; `dangling`: only those no container uses
    /// (`Some(true)`) or only those in use (`Some(false)`).
    pub async fn list(&self, dangling: Option<bool>) -> Result<Vec<Volume>> {
        let rows = sqlx::query_as::<_, Row>(
            "SELECT * FROM volumes v WHERE ?1 IS NULL
             OR ?1 = NOT EXISTS (SELECT 1 FROM volume_users u WHERE u.volume = v.name)
             ORDER BY name",
        )
        .bind(dangling)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| self.to_api(r)).collect())
    }

    /// `volume inspect NAME`.
    pub async fn inspect(&self, name: &str) -> Result<Volume> {
        if !spec::valid_volume_name(name) {
            return Err(no_such(name));
        }
        let row = self.row(name).await?.ok_or_else(|| no_such(name))?;
        Ok(self.to_api(&row))
    }

    async fn users(&self, name: &str) -> Result<Vec<String>> {
        let ids: Vec<(String,)> = sqlx::query_as(
            "SELECT DISTINCT container_id FROM volume_users WHERE volume = ? ORDER BY container_id",
        )
        .bind(name)
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().map(|(i,)| i).collect())
    }

    /// `volume rm [-f] NAME`: refused while any container (even a stopped
    /// one) uses it, with or without force; force only hides "no such".
    pub async fn remove(&self, name: &str, force: bool) -> Result<()> {
        if !spec::valid_volume_name(name) || self.row(name).await?.is_none() {
            return if force { Ok(()) } else { Err(no_such(name)) };
        }
        let users = self.users(name).await?;
        if !users.is_empty() {
            return Err(Error::Conflict(format!(
                "remove {name}: volume is in use - [{}]",
                users.join(" ")
            )));
        }
        // The check again in the same statement: a container created since
        // keeps its volume.
        let gone = sqlx::query(
            "DELETE FROM volumes WHERE name = ?1
             AND NOT EXISTS (SELECT 1 FROM volume_users WHERE volume = ?1)",
        )
        .bind(name)
        .execute(&self.pool)
        .await?;
        if gone.rows_affected() == 0 {
            return Err(Error::Conflict(format!("remove {name}: volume is in use")));
        }
        let dir = self.dir.join(name);
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(volume = %name, error = %e, "removing {}", dir.display());
        }
        tracing::info!(volume = %name, "volume removed");
        Ok(())
    }

    /// `volume prune [-a]`: unused anonymous volumes (all unused ones with
    /// `all`), as docker 23+.
    pub async fn prune(&self, all: bool) -> Result<VolumePruneReport> {
        let rows = sqlx::query_as::<_, Row>(
            "SELECT * FROM volumes v WHERE NOT EXISTS
             (SELECT 1 FROM volume_users u WHERE u.volume = v.name) ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut report = VolumePruneReport::default();
        for row in rows.iter().filter(|r| all || r.anonymous) {
            let size = dir_size(&self.dir.join(&row.name));
            match self.remove(&row.name, false).await {
                Ok(()) => {
                    report.volumes_deleted.push(row.name.clone());
                    report.space_reclaimed += size;
                }
                Err(e) => tracing::warn!(volume = %row.name, error = %e, "prune"),
            }
        }
        Ok(report)
    }

    /// Records the volumes a new container's `-v` flags name, making those
    /// that do not exist (anonymous ones get a random name). On failure
    /// nothing it made is left.
    pub async fn attach(&self, container_id: &str, specs: &[VolumeSpec]) -> Result<()> {
        let mut made_anonymous = Vec::new();
        let mut recorded = Vec::new();
        let result = async {
            for s in specs {
                let name = match &s.source {
                    Source::Host(_) => continue,
                    Source::Named(n) => {
                        self.ensure(n, &BTreeMap::new(), false).await?;
                        n.clone()
                    }
                    Source::Anonymous => {
                        let n = random_name()?;
                        let labels = BTreeMap::from([(ANONYMOUS_LABEL.to_string(), String::new())]);
                        self.ensure(&n, &labels, true).await?;
                        made_anonymous.push(n.clone());
                        n
                    }
                };
                sqlx::query(
                    "INSERT INTO volume_users (volume, container_id, destination) VALUES (?, ?, ?)",
                )
                .bind(&name)
                .bind(container_id)
                .bind(&s.destination)
                .execute(&self.pool)
                .await?;
                recorded.push(s.destination.clone());
            }
            Ok::<_, Error>(())
        }
        .await;
        if result.is_err() {
            for dest in &recorded {
                let _ = sqlx::query(
                    "DELETE FROM volume_users WHERE container_id = ? AND destination = ?",
                )
                .bind(container_id)
                .bind(dest)
                .execute(&self.pool)
                .await;
            }
            self.remove_unused(&made_anonymous).await;
        }
        result
    }

    /// The anonymous volumes a container uses (to remove with it).
    pub async fn anonymous_of(&self, container_id: &str) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT u.volume FROM volume_users u JOIN volumes v ON v.name = u.volume
             WHERE u.container_id = ? AND v.anonymous = 1",
        )
        .bind(container_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(n,)| n).collect())
    }

    /// Removes those of `names` no container uses any more.
    pub async fn remove_unused(&self, names: &[String]) {
        for name in names {
            match self.remove(name, true).await {
                Ok(()) | Err(Error::Conflict(_)) => {}
                Err(e) => tracing::warn!(volume = %name, error = %e, "removing a volume"),
            }
        }
    }

    /// destination -> volume name, for one container.
    async fn names_of(&self, container_id: &str) -> Result<HashMap<String, String>> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT destination, volume FROM volume_users WHERE container_id = ?")
                .bind(container_id)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().collect())
    }

    /// The runtime-spec mounts of a container's `-v` and `--tmpfs` flags,
    /// parents before children. Makes a missing host directory of a bind
    /// (as docker's `-v`) and copies the image's content at the
    /// destination into an empty volume. `rootfs` must be mounted.
    pub async fn mounts(
        &self,
        container_id: &str,
        req: &CreateRequest,
        rootfs: &Path,
    ) -> Result<Vec<Mount>> {
        let (volumes, tmpfs) =
            spec::parse_all(&req.binds, &req.tmpfs).map_err(Error::BadRequest)?;
        let mut names = self.names_of(container_id).await?;
        // A daemon that stopped between recording the container and its
        // volumes left some out: record them now.
        let missing: Vec<VolumeSpec> = volumes
            .iter()
            .filter(|v| !matches!(v.source, Source::Host(_)) && !names.contains_key(&v.destination))
            .cloned()
            .collect();
        if !missing.is_empty() {
            self.attach(container_id, &missing).await?;
            names = self.names_of(container_id).await?;
        }
        let mut out: Vec<Mount> = Vec::new();
        for v in &volumes {
            let source = match &v.source {
                Source::Host(path) => {
                    let path = PathBuf::from(path);
                    if std::fs::symlink_metadata(&path).is_err() {
                        std::fs::create_dir_all(&path)
                            .map_err(internal(format!("creating {}", path.display())))?;
                    }
                    path
                }
                Source::Named(_) | Source::Anonymous => {
                    let name = names.get(&v.destination).ok_or_else(|| {
                        Error::Internal(format!(
                            "container {container_id}: no volume recorded for {}",
                            v.destination
                        ))
                    })?;
                    let data = self.data(name);
                    std::fs::create_dir_all(&data)
                        .map_err(internal(format!("creating {}", data.display())))?;
                    if !v.no_copy {
                        let (rootfs, dest, data2) =
                            (rootfs.to_path_buf(), v.destination.clone(), data.clone());
                        tokio::task::spawn_blocking(move || copy_up(&rootfs, &dest, &data2))
                            .await
                            .map_err(Error::internal)?
                            .map_err(|e| {
                                Error::Internal(format!(
                                    "copying {} into volume {name}: {e}",
                                    v.destination
                                ))
                            })?;
                    }
                    data
                }
            };
            let mut options = vec!["rbind".to_string()];
            options.push(if v.propagation.is_empty() {
                "rprivate".to_string()
            } else {
                v.propagation.clone()
            });
            if v.read_only {
                // docker 25+: read-only all the way down (runc's `rro`).
                options.push("ro".to_string());
                options.push("rro".to_string());
            }
            out.push(
                MountBuilder::default()
                    .destination(&v.destination)
                    .typ("bind")
                    .source(source)
                    .options(options)
                    .build()
                    .map_err(Error::internal)?,
            );
        }
        for t in &tmpfs {
            out.push(
                MountBuilder::default()
                    .destination(&t.destination)
                    .typ("tmpfs")
                    .source("tmpfs")
                    .options(t.mount_options.clone())
                    .build()
                    .map_err(Error::internal)?,
            );
        }
        // Parents first, as docker sorts them (stable: ties keep their order).
        out.sort_by_key(|m| m.destination().components().count());
        Ok(out)
    }

    /// docker's `Mounts`, `HostConfig.Binds`, `HostConfig.Tmpfs` and
    /// `Config.Volumes` of a container, for `inspect`.
    pub async fn inspect_parts(
        &self,
        container_id: &str,
        req: &CreateRequest,
    ) -> Result<(Value, Value, Value, Value)> {
        let (volumes, tmpfs) = spec::parse_all(&req.binds, &req.tmpfs).unwrap_or_default();
        let names = self.names_of(container_id).await?;
        let mut mounts = Vec::new();
        let mut binds = Vec::new();
        let mut anonymous = serde_json::Map::new();
        for (v, typed) in volumes.iter().zip(&req.binds) {
            let rw = !v.read_only;
            match &v.source {
                Source::Host(path) => {
                    binds.push(typed.clone());
                    mounts.push(json!({
                        "Type": "bind",
                        "Source": path,
                        "Destination": v.destination,
                        "Mode": v.mode,
                        "RW": rw,
                        "Propagation": v.propagation,
                    }));
                }
                other => {
                    if matches!(other, Source::Named(_)) {
                        binds.push(typed.clone());
                    } else {
                        anonymous.insert(v.destination.clone(), json!({}));
                    }
                    let name = names.get(&v.destination).cloned().unwrap_or_default();
                    mounts.push(json!({
                        "Type": "volume",
                        "Name": name,
                        "Source": self.data(&name),
                        "Destination": v.destination,
                        "Driver": "local",
                        "Mode": v.mode,
                        "RW": rw,
                        "Propagation": "",
                    }));
                }
            }
        }
        let mut tmpfs_map = serde_json::Map::new();
        for t in &tmpfs {
            // docker lists `--tmpfs` mounts here only, not in `Mounts`.
            tmpfs_map.insert(t.destination.clone(), json!(t.options));
        }
        let binds = if binds.is_empty() {
            Value::Null
        } else {
            json!(binds)
        };
        let tmpfs_map = if tmpfs_map.is_empty() {
            Value::Null
        } else {
            Value::Object(tmpfs_map)
        };
        let anonymous = if anonymous.is_empty() {
            Value::Null
        } else {
            Value::Object(anonymous)
        };
        Ok((Value::Array(mounts), binds, tmpfs_map, anonymous))
    }
}

/// Bytes of regular files under `dir` (symlinks not followed).
fn dir_size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(md) if md.is_dir() => stack.push(e.path()),
                Ok(md) if md.is_file() => total += md.len(),
                _ => {}
            }
        }
    }
    total
}

/// docker's copy-up: when the volume at `data` is empty and the image has
/// a directory at `dest`, its content (and the directory's owner and mode)
/// are copied into the volume.
///
/// `dest` is resolved inside `rootfs` (a symlink in the image cannot name
/// a host path). The copy is made in a staging directory next to `_data`,
/// which no container sees, and moved into `_data` entry by entry without
/// replacing anything, so a container writing into the volume meanwhile
/// cannot redirect the copy with a symlink of its own.
fn copy_up(rootfs: &Path, dest: &str, data: &Path) -> std::io::Result<()> {
    let is_empty =
        |p: &Path| -> std::io::Result<bool> { Ok(std::fs::read_dir(p)?.next().is_none()) };
    if !is_empty(data)? {
        return Ok(());
    }
    let src =
        crate::runtime::secure_join(rootfs, Path::new(dest)).map_err(std::io::Error::other)?;
    let md = match std::fs::symlink_metadata(&src) {
        Ok(md) if md.is_dir() => md,
        _ => return Ok(()),
    };
    let staging = data.with_file_name("_copyup");
    match std::fs::remove_dir_all(&staging) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::fs::create_dir(&staging)?;
    let copied = copy_tree(&src, &staging).and_then(|()| {
        for entry in std::fs::read_dir(&staging)? {
            let entry = entry?;
            match rustix::fs::renameat_with(
                rustix::fs::CWD,
                entry.path(),
                rustix::fs::CWD,
                data.join(entry.file_name()),
                rustix::fs::RenameFlags::NOREPLACE,
            ) {
                Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    });
    let _ = std::fs::remove_dir_all(&staging);
    copied?;
    std::os::unix::fs::chown(data, Some(md.uid()), Some(md.gid()))?;
    std::fs::set_permissions(data, std::fs::Permissions::from_mode(md.mode() & 0o7777))
}

/// Copies the tree under `src` into the existing dir `dst`, keeping
/// owners, modes and symlinks (never following them). Device nodes,
/// fifos and sockets are left out.
fn copy_tree(src: &Path, dst: &Path) -> std::io::Result<()> {
    let mut stack = vec![(src.to_path_buf(), dst.to_path_buf())];
    while let Some((from_dir, to_dir)) = stack.pop() {
        for entry in std::fs::read_dir(&from_dir)? {
            let entry = entry?;
            let from = entry.path();
            let to = to_dir.join(entry.file_name());
            let md = std::fs::symlink_metadata(&from)?;
            let ft = md.file_type();
            if ft.is_symlink() {
                std::os::unix::fs::symlink(std::fs::read_link(&from)?, &to)?;
                std::os::unix::fs::lchown(&to, Some(md.uid()), Some(md.gid()))?;
                continue;
            }
            if ft.is_dir() {
                std::fs::create_dir(&to)?;
                stack.push((from, to.clone()));
            } else if ft.is_file() {
                std::fs::copy(&from, &to)?;
            } else {
                continue;
            }
            std::os::unix::fs::lchown(&to, Some(md.uid()), Some(md.gid()))?;
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(md.mode() & 0o7777))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_up_fills_an_empty_volume_and_stays_in_the_rootfs() {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        let host = dir.path().join("host");
        std::fs::create_dir_all(rootfs.join("app/sub")).unwrap();
        std::fs::create_dir_all(&host).unwrap();
        std::fs::write(rootfs.join("app/a.txt"), "a").unwrap();
        std::fs::write(rootfs.join("app/sub/b.txt"), "b").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", rootfs.join("app/link")).unwrap();
        std::fs::write(host.join("secret"), "host").unwrap();
        // An image symlink pointing at a host path resolves inside the rootfs.
        std::os::unix::fs::symlink(&host, rootfs.join("evil")).unwrap();
        let vol = dir.path().join("vol/_data");
        std::fs::create_dir_all(&vol).unwrap();
        copy_up(&rootfs, "/app", &vol).unwrap();
        assert_eq!(std::fs::read_to_string(vol.join("a.txt")).unwrap(), "a");
        assert_eq!(std::fs::read_to_string(vol.join("sub/b.txt")).unwrap(), "b");
        assert_eq!(
            std::fs::read_link(vol.join("link")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert!(!dir.path().join("vol/_copyup").exists());
        // Not empty any more: a second copy-up changes nothing.
        std::fs::remove_file(vol.join("a.txt")).unwrap();
        copy_up(&rootfs, "/app", &vol).unwrap();
        assert!(!vol.join("a.txt").exists());

        let vol2 = dir.path().join("vol2/_data");
        std::fs::create_dir_all(&vol2).unwrap();
        copy_up(&rootfs, "/evil", &vol2).unwrap();
        assert!(!vol2.join("secret").exists());
    }
}
