//! `commit`, `tag` and `push`: the "pull, change, build, push" loop
//! without docker.
//!
//! Commit turns a container's writable layer (the overlay upper dir) into a
//! new gzip layer on top of its image's layers (`image::export`), unpacks
//! it into the store like a pulled layer (so `run` of the new image needs no
//! pull), writes the updated config (diff_ids, history, the container's
//! config with `--change`s) and a manifest to the store, and records the
//! image in the catalog exactly as a pull would. A running container is not
//! paused (docker pauses it): its upper dir is read live, so files it writes
//! meanwhile may be cut at the size they had when read.
//!
//! Push sends a stored image manifest with its blobs (`image::push`) and
//! records the pushed digest as a `repo@digest` name, as docker does.
//!
//! Called by `http`; calls `images` (catalog rows, credentials, the store),
//! `image::export`, `image::unpack`, `image::push`.

use std::collections::HashMap;
use std::path::PathBuf;

use serde_json::{Value, json};
use sqlx::Row;
use tokio::sync::mpsc;

use super::error::{Error, Result};
use super::images::{Images, NewImage, catalog_name, client_error, dir_size};
use crate::api::{CommitRequest, CreateRequest, PullEvent};
use crate::image::client::{DOCKER_MANIFEST, OCI_MANIFEST};
use crate::image::export::{ExportedLayer, export_layer};
use crate::image::push::{self, PushError, PushEvent};
use crate::image::reference::Reference;
use crate::image::store::Store;

/// diff_id of an empty tar (1024 zero bytes): a commit of an unchanged
/// container, recorded as an `empty_layer` history entry, as docker does.
const EMPTY_DIFF_ID: &str =
    "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef";
const MAX_CHANGES: usize = 64;
const MAX_CHANGE_LEN: usize = 8192;
const MAX_TEXT: usize = 4096;

/// The container side of a commit (from `Containers::commit_source`).
#[derive(Debug, Clone)]
pub struct CommitSource {
    pub id: String,
    pub image_id: String,
    pub upper: PathBuf,
    pub running: bool,
    pub request: CreateRequest,
}

impl Images {
    /// Commits `src` as a new image; returns its id (`sha256:..`).
    pub async fn commit(&self, src: CommitSource, req: &CommitRequest) -> Result<String> {
        if req.changes.len() > MAX_CHANGES
            || req.changes.iter().any(|c| c.len() > MAX_CHANGE_LEN)
            || req.comment.len() > MAX_TEXT
            || req.author.len() > MAX_TEXT
        {
            return Err(Error::BadRequest(
                "commit: --change, -m or -a value too long".into(),
            ));
        }
        let target = match req.reference.as_deref().filter(|r| !r.is_empty()) {
            Some(r) => {
                let parsed = Reference::parse_with_default(r, self.default_registry())
                    .map_err(|e| Error::BadRequest(format!("invalid reference format: {e}")))?;
                if parsed.digest().is_some() {
                    return Err(Error::BadRequest(
                        "invalid reference format: a commit is named by a tag, not a digest".into(),
                    ));
                }
                Some(parsed)
            }
            None => None,
        };
        let changes = req
            .changes
            .iter()
            .map(|c| parse_change(c))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(Error::BadRequest)?;

        // A read lock as a pull holds: prune cannot reclaim the new layer
        // before the image row points at it.
        let _committing = self.lock.read().await;
        let row = sqlx::query("SELECT config, manifest_digest FROM images WHERE id = ?")
            .bind(&src.image_id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| {
                Error::Conflict(format!(
                    "container {}: its image {} is gone",
                    src.id, src.image_id
                ))
            })?;
        let base_config: Value = serde_json::from_str(&row.try_get::<String, _>("config")?)
            .map_err(|e| Error::Internal(format!("image {}: stored config: {e}", src.image_id)))?;
        let base_manifest_digest: String = row.try_get("manifest_digest")?;
        let base_layers: Vec<(String, i64)> = sqlx::query_as(
            "SELECT digest, size FROM image_layers WHERE image_id = ? ORDER BY position",
        )
        .bind(&src.image_id)
        .fetch_all(&self.pool)
        .await?;
        let store = self.store().clone();
        let base_manifest: Value = serde_json::from_slice(
            &store
                .read_blob(&base_manifest_digest)
                .map_err(|e| Error::Internal(format!("image {}: {e}", src.image_id)))?,
        )
        .map_err(|e| Error::Internal(format!("image {}: stored manifest: {e}", src.image_id)))?;

        // The layer: export, then unpack into the store (blocking fs work).
        let upper = src.upper.clone();
        let cid = src.id.clone();
        let (layer, unpacked_size) = tokio::task::spawn_blocking(move || {
            build_layer(&store, &upper)
                .map_err(|e| Error::Internal(format!("committing container {cid}: {e}")))
        })
        .await
        .map_err(Error::internal)??;
        let empty = layer.diff_id == EMPTY_DIFF_ID;

        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
        let mut config = base_config.clone();
        let container_config = effective_config(&base_config, &src.request, &changes);
        config["config"] = container_config;
        config["created"] = json!(now);
        if !req.author.is_empty() {
            config["author"] = json!(req.author);
        } else if let Some(o) = config.as_object_mut() {
            o.remove("author");
        }
        let cmd = run_command(&base_config, &src.request).join(" ");
        let mut history = json!({ "created": now, "created_by": cmd });
        if !req.author.is_empty() {
            history["author"] = json!(req.author);
        }
        if !req.comment.is_empty() {
            history["comment"] = json!(req.comment);
        }
        if empty {
            history["empty_layer"] = json!(true);
        }
        push_array(&mut config, "history", history);
        if !empty {
            config["rootfs"]["type"] = json!("layers");
            let ids = config["rootfs"]
                .as_object_mut()
                .ok_or_else(|| Error::Internal("stored config has no rootfs".into()))?
                .entry("diff_ids")
                .or_insert_with(|| json!([]));
            match ids.as_array_mut() {
                Some(a) => a.push(json!(layer.diff_id)),
                None => return Err(Error::Internal("stored config: bad diff_ids".into())),
            }
        }
        let config_bytes = serde_json::to_vec(&config).map_err(Error::internal)?;
        let config_digest = crate::image::client::sha256_digest(&config_bytes);

        let docker_types = base_manifest["mediaType"].as_str() == Some(DOCKER_MANIFEST);
        let mut layers = base_manifest["layers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if !empty {
            layers.push(json!({
                "mediaType": if docker_types {
                    "application/vnd.docker.image.rootfs.diff.tar.gzip"
                } else {
                    "application/vnd.oci.image.layer.v1.tar+gzip"
                },
                "digest": layer.digest,
                "size": layer.size,
            }));
        }
        let config_type = base_manifest["config"]["mediaType"]
            .as_str()
            .unwrap_or("application/vnd.oci.image.config.v1+json")
            .to_string();
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": if docker_types { DOCKER_MANIFEST } else { OCI_MANIFEST },
            "config": {
                "mediaType": config_type,
                "digest": config_digest,
                "size": config_bytes.len(),
            },
            "layers": layers,
        });
        let manifest_bytes = serde_json::to_vec(&manifest).map_err(Error::internal)?;
        let manifest_digest = crate::image::client::sha256_digest(&manifest_bytes);
        let store = self.store();
        store
            .put_blob(&config_digest, &config_bytes)
            .and_then(|_| store.put_blob(&manifest_digest, &manifest_bytes))
            .map_err(|e| Error::Internal(format!("storing the committed image: {e}")))?;

        let mut rows: Vec<(String, u64)> = base_layers
            .into_iter()
            .map(|(d, s)| (d, s.max(0) as u64))
            .collect();
        if !empty {
            rows.push((layer.digest.clone(), unpacked_size));
        }
        let img = NewImage {
            id: config_digest.clone(),
            manifest_digest,
            index_digest: None,
            config_json: String::from_utf8(config_bytes).map_err(Error::internal)?,
            layers: rows,
            created: chrono::Utc::now().timestamp(),
        };
        let names: Vec<(String, &str)> = target.iter().map(|r| (catalog_name(r), "tag")).collect();
        self.insert(&img, &names).await?;
        tracing::info!(container = %src.id, image = %config_digest, live = src.running, "committed");
        Ok(config_digest)
    }

    /// `tag SOURCE TARGET`: points the name TARGET at SOURCE's image.
    pub async fn tag(&self, source: &str, target: &str) -> Result<()> {
        let id = self.resolve(source).await?.id;
        let r = Reference::parse_with_default(target, self.default_registry())
            .map_err(|e| Error::BadRequest(format!("invalid reference format: {e}")))?;
        if r.digest().is_some() {
            return Err(Error::BadRequest(
                "refusing to create a tag with a digest reference".into(),
            ));
        }
        let img_row = sqlx::query("SELECT 1 FROM images WHERE id = ?")
            .bind(&id)
            .fetch_optional(&self.pool)
            .await?;
        if img_row.is_none() {
            return Err(Error::NotFound(format!("No such image: {source}")));
        }
        sqlx::query(
            "INSERT INTO image_names (name, kind, image_id) VALUES (?, 'tag', ?)
             ON CONFLICT (name) DO UPDATE SET kind = 'tag', image_id = excluded.image_id",
        )
        .bind(catalog_name(&r))
        .bind(&id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Resolves what `push REF` sends: the reference with its tag and the
    /// image's manifest digest. Fails with docker's message when no local
    /// image has that name.
    pub async fn push_target(&self, reference: &str) -> Result<(Reference, String)> {
        let missing = || {
            Error::NotFound(format!(
                "An image does not exist locally with the tag: {reference}"
            ))
        };
        let r = Reference::parse_with_default(reference, self.default_registry())
            .map_err(|e| Error::BadRequest(format!("invalid reference format: {e}")))?;
        let id: Option<String> =
            sqlx::query_scalar("SELECT image_id FROM image_names WHERE name = ?")
                .bind(catalog_name(&r))
                .fetch_optional(&self.pool)
                .await?;
        let id = id.ok_or_else(missing)?;
        let manifest: String =
            sqlx::query_scalar("SELECT manifest_digest FROM images WHERE id = ?")
                .bind(&id)
                .fetch_optional(&self.pool)
                .await?
                .ok_or_else(missing)?;
        Ok((r, manifest))
    }

    /// Pushes (see [`Images::push_target`]), sending docker's push events.
    pub async fn push(
        &self,
        r: &Reference,
        manifest_digest: &str,
        events: mpsc::Sender<PullEvent>,
    ) -> Result<()> {
        let client = self.client()?;
        let _pushing = self.lock.read().await;
        let status = |s: String| PullEvent {
            status: s,
            ..Default::default()
        };
        let _ = events
            .send(status(format!(
                "The push refers to repository [{}/{}]",
                r.registry(),
                r.repository()
            )))
            .await;
        let (tx, mut rx) = mpsc::unbounded_channel::<PullEvent>();
        let progress = move |e: PushEvent<'_>| {
            let (digest, what) = match e {
                PushEvent::Preparing { digest } => (digest, "Preparing"),
                PushEvent::Exists { digest } => (digest, "Layer already exists"),
                PushEvent::Pushed { digest } => (digest, "Pushed"),
            };
            let _ = tx.send(PullEvent {
                id: Some(short(digest)),
                status: what.to_string(),
                ..Default::default()
            });
        };
        let work = async {
            let r = push::push(&client, self.store(), r, manifest_digest, &progress).await;
            drop(progress);
            r
        };
        let forward = async {
            while let Some(ev) = rx.recv().await {
                let _ = events.send(ev).await;
            }
        };
        let (result, ()) = tokio::join!(work, forward);
        let pushed = result.map_err(|e| push_error(e, r))?;
        let name = format!("{}/{}@{}", r.registry(), r.repository(), pushed.digest);
        let id: Option<String> =
            sqlx::query_scalar("SELECT id FROM images WHERE manifest_digest = ? LIMIT 1")
                .bind(manifest_digest)
                .fetch_optional(&self.pool)
                .await?;
        if let Some(id) = id {
            sqlx::query(
                "INSERT INTO image_names (name, kind, image_id) VALUES (?, 'digest', ?)
                 ON CONFLICT (name) DO UPDATE SET image_id = excluded.image_id",
            )
            .bind(&name)
            .bind(&id)
            .execute(&self.pool)
            .await?;
        }
        let _ = events
            .send(status(format!(
                "{}: digest: {} size: {}",
                r.manifest_reference(),
                pushed.digest,
                pushed.size
            )))
            .await;
        Ok(())
    }
}

fn short(digest: &str) -> String {
    digest
        .strip_prefix("sha256:")
        .unwrap_or(digest)
        .chars()
        .take(12)
        .collect()
}

fn push_error(e: PushError, r: &Reference) -> Error {
    match e {
        PushError::Client(c) => match client_error(c, r) {
            // client_error words its messages for pulls.
            Error::Unauthorized(m) => Error::Unauthorized(m.replacen("pulling", "pushing", 1)),
            Error::NotFound(m) => Error::Registry(m),
            other => other,
        },
        PushError::Refused(m) => Error::Unauthorized(m),
        e @ PushError::MissingLayerBlob(_) => Error::Conflict(e.to_string()),
        e @ PushError::Status { .. } => Error::Registry(e.to_string()),
        e @ (PushError::Store(_) | PushError::BadManifest { .. }) => Error::Internal(e.to_string()),
    }
}

/// Exports `upper` as a layer blob and unpacks that blob into the store's
/// layer dir (unless an identical layer is there). Returns the layer and
/// its unpacked size.
fn build_layer(
    store: &Store,
    upper: &std::path::Path,
) -> std::result::Result<(ExportedLayer, u64), String> {
    let layer = export_layer(store, upper).map_err(|e| e.to_string())?;
    if layer.diff_id == EMPTY_DIFF_ID {
        return Ok((layer, 0));
    }
    if !store.has_layer(&layer.digest) {
        let temp = store
            .begin_layer(&layer.digest)
            .map_err(|e| e.to_string())?;
        let (file, _) = store.open_blob(&layer.digest).map_err(|e| e.to_string())?;
        let gz = flate2::read::MultiGzDecoder::new(std::io::BufReader::new(file));
        if let Err(e) = crate::image::unpack::unpack_layer(gz, &temp.diff_dir()) {
            // No layer dir for it: the blob would only be garbage.
            if let Ok(p) = store.blob_path(&layer.digest) {
                let _ = std::fs::remove_file(p);
            }
            return Err(format!("unpacking the new layer: {e}"));
        }
        temp.commit().map_err(|e| e.to_string())?;
    }
    let path = store.layer_path(&layer.digest).map_err(|e| e.to_string())?;
    let size = dir_size(&path).map_err(|e| e.to_string())?;
    Ok((layer, size))
}

/// One parsed `--change` instruction.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Cmd(Vec<String>),
    Entrypoint(Vec<String>),
    Env(String, String),
    Workdir(String),
    Label(String, String),
    User(String),
    Expose(String),
    StopSignal(String),
}

/// Parses a Dockerfile instruction as `commit --change` takes it.
pub fn parse_change(line: &str) -> std::result::Result<Change, String> {
    let line = line.trim();
    let (word, rest) = line
        .split_once(char::is_whitespace)
        .map(|(w, r)| (w, r.trim()))
        .unwrap_or((line, ""));
    let bad = |why: &str| format!("dockerfile parse error on --change {line:?}: {why}");
    let command = |rest: &str| -> std::result::Result<Vec<String>, String> {
        if rest.starts_with('[') {
            serde_json::from_str::<Vec<String>>(rest).map_err(|e| bad(&e.to_string()))
        } else if rest.is_empty() {
            Err(bad("missing arguments"))
        } else {
            Ok(vec!["/bin/sh".into(), "-c".into(), rest.to_string()])
        }
    };
    let pair = |rest: &str| -> std::result::Result<(String, String), String> {
        match rest.split_once('=') {
            Some((k, v)) if !k.is_empty() && !k.contains(char::is_whitespace) => {
                Ok((k.to_string(), unquote(v)))
            }
            _ => match rest.split_once(char::is_whitespace) {
                Some((k, v)) => Ok((k.to_string(), unquote(v.trim()))),
                None => Err(bad("expected KEY=VALUE")),
            },
        }
    };
    match word.to_ascii_uppercase().as_str() {
        "CMD" => command(rest).map(Change::Cmd),
        "ENTRYPOINT" => command(rest).map(Change::Entrypoint),
        "ENV" => pair(rest).map(|(k, v)| Change::Env(k, v)),
        "LABEL" => pair(rest).map(|(k, v)| Change::Label(k, v)),
        "WORKDIR" if !rest.is_empty() => Ok(Change::Workdir(rest.to_string())),
        "USER" if !rest.is_empty() => Ok(Change::User(rest.to_string())),
        "EXPOSE" if !rest.is_empty() => Ok(Change::Expose(if rest.contains('/') {
            rest.to_string()
        } else {
            format!("{rest}/tcp")
        })),
        "STOPSIGNAL" if !rest.is_empty() => Ok(Change::StopSignal(rest.to_string())),
        "WORKDIR" | "USER" | "EXPOSE" | "STOPSIGNAL" => Err(bad("missing argument")),
        other => Err(format!(
            "{other} is not a valid change command (CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, STOPSIGNAL, USER, WORKDIR)"
        )),
    }
}

fn unquote(v: &str) -> String {
    let v = v.trim();
    if v.len() >= 2
        && ((v.starts_with('"') && v.ends_with('"')) || (v.starts_with('\'') && v.ends_with('\'')))
    {
        v[1..v.len() - 1].to_string()
    } else {
        v.to_string()
    }
}

/// The command the container ran (Entrypoint + Cmd as docker computes it).
fn run_command(image: &Value, req: &CreateRequest) -> Vec<String> {
    let (entrypoint, cmd) = entry_and_cmd(image, req);
    entrypoint
        .into_iter()
        .flatten()
        .chain(cmd.into_iter().flatten())
        .collect()
}

fn strings(v: &Value) -> Option<Vec<String>> {
    v.as_array().map(|a| {
        a.iter()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect()
    })
}

fn entry_and_cmd(image: &Value, req: &CreateRequest) -> (Option<Vec<String>>, Option<Vec<String>>) {
    let c = &image["config"];
    let entrypoint = match &req.entrypoint {
        Some(e) if e.is_empty() => None,
        Some(e) => Some(vec![e.clone()]),
        None => strings(&c["Entrypoint"]),
    };
    let cmd = match &req.cmd {
        Some(cmd) if !cmd.is_empty() => Some(cmd.clone()),
        _ if req.entrypoint.is_some() => None,
        _ => strings(&c["Cmd"]),
    };
    (entrypoint, cmd)
}

/// The new image's `config`: the container's (image config with the
/// create request's overrides, as docker commits it), then the changes.
fn effective_config(image: &Value, req: &CreateRequest, changes: &[Change]) -> Value {
    let mut c = match &image["config"] {
        Value::Object(o) => o.clone(),
        _ => serde_json::Map::new(),
    };
    let (entrypoint, cmd) = entry_and_cmd(image, req);
    let mut env: Vec<String> =
        strings(&c.get("Env").cloned().unwrap_or(Value::Null)).unwrap_or_default();
    let mut set_env = |kv: String| {
        let key = kv.split('=').next().unwrap_or("").to_string();
        env.retain(|e| e.split('=').next() != Some(key.as_str()));
        env.push(kv);
    };
    for e in &req.env {
        if e.contains('=') {
            set_env(e.clone());
        }
    }
    let mut entrypoint = entrypoint;
    let mut cmd = cmd;
    let mut labels: HashMap<String, String> = c
        .get("Labels")
        .and_then(|l| serde_json::from_value(l.clone()).ok())
        .unwrap_or_default();
    if let Some(w) = &req.workdir {
        c.insert("WorkingDir".into(), json!(w));
    }
    if let Some(u) = &req.user {
        c.insert("User".into(), json!(u));
    }
    for ch in changes {
        match ch {
            Change::Cmd(v) => cmd = Some(v.clone()),
            Change::Entrypoint(v) => {
                entrypoint = Some(v.clone());
                // docker: a new ENTRYPOINT resets an inherited CMD unless
                // CMD is also given; commit applies changes in order, so a
                // CMD after this one sets it again.
            }
            Change::Env(k, v) => set_env(format!("{k}={v}")),
            Change::Workdir(w) => {
                c.insert("WorkingDir".into(), json!(w));
            }
            Change::Label(k, v) => {
                labels.insert(k.clone(), v.clone());
            }
            Change::User(u) => {
                c.insert("User".into(), json!(u));
            }
            Change::Expose(p) => {
                let ports = c.entry("ExposedPorts").or_insert_with(|| json!({}));
                if !ports.is_object() {
                    *ports = json!({});
                }
                ports[p.as_str()] = json!({});
            }
            Change::StopSignal(s) => {
                c.insert("StopSignal".into(), json!(s));
            }
        }
    }
    c.insert("Env".into(), json!(env));
    match cmd {
        Some(v) => c.insert("Cmd".into(), json!(v)),
        None => c.remove("Cmd"),
    };
    match entrypoint {
        Some(v) => c.insert("Entrypoint".into(), json!(v)),
        None => c.remove("Entrypoint"),
    };
    if !labels.is_empty() {
        c.insert("Labels".into(), json!(labels));
    }
    Value::Object(c)
}

fn push_array(v: &mut Value, key: &str, item: Value) {
    if !v[key].is_array() {
        v[key] = json!([]);
    }
    if let Some(a) = v[key].as_array_mut() {
        a.push(item);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_parse_like_dockerfile_instructions() {
        assert_eq!(
            parse_change(r#"CMD ["echo", "hi"]"#).unwrap(),
            Change::Cmd(vec!["echo".into(), "hi".into()])
        );
        assert_eq!(
            parse_change("cmd echo hi").unwrap(),
            Change::Cmd(vec!["/bin/sh".into(), "-c".into(), "echo hi".into()])
        );
        assert_eq!(
            parse_change("ENV A=b c").unwrap(),
            Change::Env("A".into(), "b c".into())
        );
        assert_eq!(
            parse_change("ENV A b").unwrap(),
            Change::Env("A".into(), "b".into())
        );
        assert_eq!(
            parse_change(r#"LABEL x="y z""#).unwrap(),
            Change::Label("x".into(), "y z".into())
        );
        assert_eq!(
            parse_change("WORKDIR /srv").unwrap(),
            Change::Workdir("/srv".into())
        );
        assert_eq!(
            parse_change("EXPOSE 80").unwrap(),
            Change::Expose("80/tcp".into())
        );
        assert!(parse_change("RUN rm -rf /").is_err());
        assert!(parse_change("WORKDIR").is_err());
        assert!(parse_change("CMD [broken").is_err());
    }

    #[test]
    fn the_container_config_and_changes_make_the_new_config() {
        let image = json!({"config": {
            "Env": ["PATH=/bin", "A=1"], "Cmd": ["sh"], "WorkingDir": "/"
        }});
        let req = CreateRequest {
            cmd: Some(vec!["sh".into(), "-c".into(), "touch /x".into()]),
            env: vec!["A=2".into(), "B=3".into()],
            ..Default::default()
        };
        let changes = [
            parse_change("ENV C=4").unwrap(),
            parse_change("WORKDIR /srv").unwrap(),
            parse_change("LABEL k=v").unwrap(),
        ];
        let c = effective_config(&image, &req, &changes);
        assert_eq!(c["Env"], json!(["PATH=/bin", "A=2", "B=3", "C=4"]));
        assert_eq!(c["Cmd"], json!(["sh", "-c", "touch /x"]));
        assert_eq!(c["WorkingDir"], json!("/srv"));
        assert_eq!(c["Labels"], json!({"k": "v"}));
        assert!(c.get("Entrypoint").is_none());
        assert_eq!(run_command(&image, &req).join(" "), "sh -c touch /x");
    }
}
