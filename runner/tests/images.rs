//! The daemon's image side (`daemon::images::Images`) against a real
//! wharf-server on 127.0.0.1: pull with docker's progress events, the
//! catalog (find, list, inspect), pulling again, rmi (untag vs delete,
//! shared layers, in-use conflicts), prune, login/logout with a wrong and
//! a right password, and the errors for an unknown image, an unreachable
//! registry and a bad layer.
//!
//! Needs the wharf-server binary (build it with `cargo build -p
//! wharf-server`; `common::server_bin` says where it is looked for);
//! without it the tests fail, saying so.

mod common;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::{GZIP_LAYER, OCI_MANIFEST, Upload, count, gzip, push, sha, start_server, tar_of};
use tokio::sync::mpsc;
use wharf_runner::api::{LoginRequest, PullEvent, RemovedImage};
use wharf_runner::daemon::Error;
use wharf_runner::daemon::catalog;
use wharf_runner::daemon::images::{Images, ImagesConfig};
use wharf_runner::image::Platform;
use wharf_runner::image::client::install_crypto_provider;

/// A single-platform image for this host.
struct TestImage {
    /// (gzip bytes, digest), bottom first.
    layers: Vec<(Vec<u8>, String)>,
    config: Vec<u8>,
    manifest: Vec<u8>,
}

impl TestImage {
    fn id(&self) -> String {
        sha(&self.config)
    }
    fn manifest_digest(&self) -> String {
        sha(&self.manifest)
    }
    fn upload(&self) -> Upload<'_> {
        Upload {
            blobs: (self.layers.iter().map(|(g, _)| g.as_slice()))
                .chain([self.config.as_slice()])
                .collect(),
            manifests: vec![],
            tagged: &self.manifest,
            tagged_type: OCI_MANIFEST,
        }
    }
}

/// `layers` are tars; `diff_ids` are computed from them unless `bad_diff`.
fn image(layers: &[Vec<u8>], cmd: &str, bad_diff: bool) -> TestImage {
    let gz: Vec<(Vec<u8>, String)> = layers
        .iter()
        .map(|t| {
            let g = gzip(t);
            let d = sha(&g);
            (g, d)
        })
        .collect();
    let diff_ids: Vec<String> = layers
        .iter()
        .map(|t| if bad_diff { sha(b"not it") } else { sha(t) })
        .collect();
    let config = serde_json::json!({
        "architecture": Platform::host().architecture, "os": "linux",
        "created": "2024-05-06T07:08:09Z",
        "config": {"Cmd": [cmd], "Env": ["PATH=/bin"], "WorkingDir": "/srv",
                   "Labels": {"org.example": "yes"}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    })
    .to_string()
    .into_bytes();
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha(&config), "size": config.len()},
        "layers": gz.iter().map(|(g, d)| serde_json::json!(
            {"mediaType": GZIP_LAYER, "digest": d, "size": g.len()})).collect::<Vec<_>>(),
    })
    .to_string()
    .into_bytes();
    TestImage {
        layers: gz,
        config,
        manifest,
    }
}

fn layer(name: &str, size: usize) -> Vec<u8> {
    let data: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
    tar_of(&[(name, &data)])
}

async fn open_images(root: &Path, default_registry: &str) -> Images {
    let pool = catalog::open(root).await.unwrap();
    Images::open(
        root,
        pool,
        ImagesConfig {
            default_registry: default_registry.into(),
            insecure_registries: vec![],
        },
    )
    .await
    .unwrap()
}

/// Pulls, collecting the events as a reader would (concurrently).
async fn pull(images: &Images, reference: &str) -> (Result<String, Error>, Vec<PullEvent>) {
    let (tx, mut rx) = mpsc::channel(4);
    let reader = tokio::spawn(async move {
        let mut all = Vec::new();
        while let Some(e) = rx.recv().await {
            all.push(e);
        }
        all
    });
    let r = images.pull(reference, tx).await.map(|rec| rec.id);
    (r, reader.await.unwrap())
}

fn statuses(events: &[PullEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| match &e.id {
            Some(id) => format!("{id}: {}", e.status),
            None => e.status.clone(),
        })
        .collect()
}

fn short(d: &str) -> &str {
    &d[7..19]
}

#[tokio::test]
async fn pull_then_find_list_inspect_and_pull_again() {
    let server = start_server(&[]);
    let img = image(
        &[layer("etc/one", 10), layer("app/data", 400_000)],
        "/bin/sh",
        false,
    );
    push(server.port, "team/app", "1.0", &img.upload(), None).await;
    let root = tempfile::tempdir().unwrap();
    let images = open_images(root.path(), &server.registry()).await;
    let full = format!("{}/team/app:1.0", server.registry());

    let (id, events) = pull(&images, "team/app:1.0").await;
    assert_eq!(id.unwrap(), img.id());
    let s = statuses(&events);
    let (l1, l2) = (&img.layers[0].1, &img.layers[1].1);
    assert_eq!(s[0], "1.0: Pulling from team/app");
    for l in [l1, l2] {
        let fs = format!("{}: Pulling fs layer", short(l));
        let done = format!("{}: Pull complete", short(l));
        let (a, b) = (
            s.iter().position(|x| *x == fs),
            s.iter().position(|x| *x == done),
        );
        assert!(a.is_some() && b.is_some() && a < b, "{s:?}");
    }
    // Downloading carries progress, and not for every chunk.
    let downloading: Vec<&PullEvent> = events
        .iter()
        .filter(|e| e.status == "Downloading")
        .collect();
    assert!(
        downloading
            .iter()
            .all(|e| e.total.is_some() && e.current <= e.total)
    );
    assert!(
        downloading.len() < 20,
        "{} Downloading events",
        downloading.len()
    );
    let n = s.len();
    assert_eq!(s[n - 2], format!("Digest: {}", img.manifest_digest()));
    assert_eq!(
        s[n - 1],
        format!("Status: Downloaded newer image for {full}")
    );

    for name in [
        "team/app:1.0".to_string(),
        full.clone(),
        img.id(),
        short(&img.id()).to_string(),
        format!("team/app@{}", img.manifest_digest()),
    ] {
        let rec = images.find(&name).await.unwrap();
        assert_eq!(rec.id, img.id(), "{name}");
        assert_eq!(rec.layers, vec![l1.clone(), l2.clone()]);
    }
    let e = images.find("team/app").await.unwrap_err();
    assert_eq!(e.to_string(), "No such image: team/app");

    let list = images.list(&HashMap::from([(img.id(), 3)])).await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].id, img.id());
    assert_eq!(list[0].repo_tags, vec![full.clone()]);
    assert_eq!(
        list[0].repo_digests,
        vec![format!(
            "{}/team/app@{}",
            server.registry(),
            img.manifest_digest()
        )]
    );
    assert_eq!(list[0].containers, 3);
    assert_eq!(list[0].created, 1_714_979_289);
    // The unpacked bytes of both layers.
    assert_eq!(list[0].size, 400_010);

    let v = images.inspect("team/app:1.0").await.unwrap();
    assert_eq!(v["Id"], serde_json::json!(img.id()));
    assert_eq!(v["RepoTags"], serde_json::json!([full]));
    assert_eq!(v["Created"], "2024-05-06T07:08:09Z");
    assert_eq!(v["Os"], "linux");
    assert_eq!(v["Architecture"], Platform::host().architecture.as_str());
    assert_eq!(v["Size"], 400_010);
    assert_eq!(v["Config"]["Cmd"], serde_json::json!(["/bin/sh"]));
    assert_eq!(v["Config"]["WorkingDir"], "/srv");
    assert_eq!(v["Config"]["Labels"]["org.example"], "yes");
    assert_eq!(v["RootFS"]["Type"], "layers");
    assert_eq!(v["RootFS"]["Layers"].as_array().unwrap().len(), 2);

    // Again: nothing fetched, up to date.
    let (id, events) = pull(&images, "team/app:1.0").await;
    assert_eq!(id.unwrap(), img.id());
    let s = statuses(&events);
    assert!(
        s.contains(&format!("{}: Already exists", short(l1))),
        "{s:?}"
    );
    assert!(
        s.contains(&format!("{}: Already exists", short(l2))),
        "{s:?}"
    );
    assert!(
        !s.iter()
            .any(|x| x.contains("Pulling fs layer") || x.contains("Downloading")),
        "{s:?}"
    );
    assert_eq!(
        s.last().unwrap(),
        &format!("Status: Image is up to date for {full}")
    );
}

fn layer_dir(root: &Path, digest: &str) -> PathBuf {
    root.join("layers").join(&digest[7..])
}

#[tokio::test]
async fn rmi_untags_deletes_keeps_shared_layers_and_prune_reclaims() {
    let server = start_server(&[]);
    let shared = layer("etc/shared", 1000);
    let a = image(&[shared.clone(), layer("etc/a", 2000)], "a", false);
    let b = image(&[shared.clone(), layer("etc/b", 3000)], "b", false);
    push(server.port, "team/a", "1", &a.upload(), None).await;
    push(server.port, "team/b", "1", &b.upload(), None).await;
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let images = open_images(r, &server.registry()).await;
    pull(&images, "team/a:1").await.0.unwrap();
    pull(&images, "team/b:1").await.0.unwrap();
    // The shared layer is stored once.
    assert_eq!(count(&r.join("layers")), 3);
    assert_eq!(count(&r.join("l")), 3);
    let none = HashMap::new();

    // In use: refused, with docker's message.
    let used = HashMap::from([(a.id(), 1)]);
    let e = images.remove("team/a:1", false, &used).await.unwrap_err();
    assert!(matches!(e, Error::Conflict(_)), "{e}");
    assert_eq!(
        e.to_string(),
        format!(
            "conflict: unable to remove repository reference \"team/a:1\" (must force) - container is using its referenced image {}",
            short(&a.id())
        )
    );

    // Not in use: untagged and deleted; its own layer goes, the shared one
    // stays for b.
    let removed = images.remove("team/a:1", false, &none).await.unwrap();
    assert_eq!(
        removed,
        vec![
            RemovedImage::Untagged(format!("{}/team/a:1", server.registry())),
            RemovedImage::Untagged(format!(
                "{}/team/a@{}",
                server.registry(),
                a.manifest_digest()
            )),
            RemovedImage::Deleted(a.id()),
        ]
    );
    assert!(!layer_dir(r, &a.layers[1].1).exists());
    assert!(
        layer_dir(r, &a.layers[0].1)
            .join("diff/etc/shared")
            .is_file()
    );
    assert!(!r.join("blobs/sha256").join(&a.id()[7..]).exists());
    assert!(
        !r.join("blobs/sha256")
            .join(&a.manifest_digest()[7..])
            .exists()
    );
    assert_eq!(count(&r.join("l")), 2);
    assert!(images.find("team/a:1").await.is_err());
    assert_eq!(images.find("team/b:1").await.unwrap().id, b.id());

    // A new push under b's tag: the pull moves the tag; the old b dangles
    // and prune deletes it (but not the new one, nor their shared layer).
    let b2 = image(&[shared.clone(), layer("etc/b2", 500)], "b2", false);
    push(server.port, "team/b", "1", &b2.upload(), None).await;
    let (id, events) = pull(&images, "team/b:1").await;
    assert_eq!(id.unwrap(), b2.id());
    assert!(
        statuses(&events)
            .last()
            .unwrap()
            .starts_with("Status: Downloaded newer image")
    );
    let list = images.list(&none).await.unwrap();
    let old = list.iter().find(|s| s.id == b.id()).unwrap();
    assert!(old.repo_tags.is_empty());
    let report = images.prune(false, &none).await.unwrap();
    assert!(
        report
            .images_deleted
            .contains(&RemovedImage::Deleted(b.id())),
        "{report:?}"
    );
    assert!(
        !report
            .images_deleted
            .contains(&RemovedImage::Deleted(b2.id()))
    );
    assert!(report.space_reclaimed >= 3000, "{report:?}");
    assert!(!layer_dir(r, &b.layers[1].1).exists());
    assert!(layer_dir(r, &shared_digest(&b)).exists());

    // prune -a: everything not in use goes, then the store is empty.
    let in_use = HashMap::from([(b2.id(), 1)]);
    assert!(
        images
            .prune(true, &in_use)
            .await
            .unwrap()
            .images_deleted
            .is_empty()
    );
    let report = images.prune(true, &none).await.unwrap();
    assert!(
        report
            .images_deleted
            .contains(&RemovedImage::Deleted(b2.id()))
    );
    assert!(images.list(&none).await.unwrap().is_empty());
    assert_eq!(count(&r.join("layers")), 0);
    assert_eq!(count(&r.join("l")), 0);
    assert_eq!(count(&r.join("blobs/sha256")), 0);
    assert_eq!(count(&r.join("tmp")), 0);
}

fn shared_digest(img: &TestImage) -> String {
    img.layers[0].1.clone()
}

#[tokio::test]
async fn unknown_image_unreachable_registry_and_bad_layer() {
    let server = start_server(&[]);
    let root = tempfile::tempdir().unwrap();
    let images = open_images(root.path(), &server.registry()).await;

    let (r, _) = pull(&images, "nope").await;
    let e = r.unwrap_err();
    assert!(matches!(e, Error::NotFound(_)), "{e}");
    assert_eq!(
        e.to_string(),
        format!(
            "manifest for {}/nope:latest not found: manifest unknown",
            server.registry()
        )
    );

    let e = pull(&images, "127.0.0.1:9/team/app:1").await.0.unwrap_err();
    assert!(matches!(e, Error::Registry(_)), "{e}");
    assert!(e.to_string().contains("127.0.0.1:9"), "{e}");
    assert!(!e.to_string().contains('\n'), "{e}");

    let e = pull(&images, "Bad//Name").await.0.unwrap_err();
    assert!(matches!(e, Error::BadRequest(_)), "{e}");

    // A layer whose content is not what the config says: nothing recorded,
    // nothing half-made left in the store.
    let bad = image(&[layer("etc/x", 100)], "x", true);
    push(server.port, "team/bad", "1", &bad.upload(), None).await;
    let e = pull(&images, "team/bad:1").await.0.unwrap_err();
    assert!(matches!(e, Error::Registry(_)), "{e}");
    assert!(e.to_string().contains(&bad.layers[0].1), "{e}");
    assert!(images.list(&HashMap::new()).await.unwrap().is_empty());
    assert_eq!(count(&root.path().join("layers")), 0);
    assert_eq!(count(&root.path().join("tmp")), 0);
}

#[tokio::test]
async fn login_with_a_wrong_then_the_right_password() {
    let server = start_server(&[
        ("WHARF_AUTH_ENABLED", "true"),
        ("WHARF_ADMIN_PASSWORD", "right-password-1"),
    ]);
    let img = image(&[layer("etc/secret", 10)], "s", false);
    install_crypto_provider();
    let tok: serde_json::Value = reqwest::Client::new()
        .get(format!(
            "http://127.0.0.1:{}/token?service=wharf-registry&scope=repository:team/secret:pull,push",
            server.port
        ))
        .basic_auth("admin", Some("right-password-1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    push(
        server.port,
        "team/secret",
        "1",
        &img.upload(),
        Some(tok["token"].as_str().expect("token")),
    )
    .await;

    let root = tempfile::tempdir().unwrap();
    let auth_file = root.path().join("auth.json");
    let images = open_images(root.path(), &server.registry()).await;
    // Not logged in: the pull is refused.
    let e = pull(&images, "team/secret:1").await.0.unwrap_err();
    assert!(matches!(e, Error::Unauthorized(_)), "{e}");

    let login = |password: &str| LoginRequest {
        registry: String::new(),
        username: "admin".into(),
        password: password.into(),
    };
    let e = images.login(login("wrong-password")).await.unwrap_err();
    assert!(matches!(e, Error::Unauthorized(_)), "{e}");
    assert!(e.to_string().contains(&server.registry()), "{e}");
    assert!(!e.to_string().contains("wrong-password"), "{e}");
    assert!(!auth_file.exists());

    images.login(login("right-password-1")).await.unwrap();
    let mode = std::fs::metadata(&auth_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&auth_file).unwrap()).unwrap();
    use base64::Engine as _;
    assert_eq!(
        stored["auths"][server.registry()]["auth"],
        base64::engine::general_purpose::STANDARD.encode("admin:right-password-1")
    );
    assert_eq!(pull(&images, "team/secret:1").await.0.unwrap(), img.id());

    // The credentials survive a restart.
    drop(images);
    let images = open_images(root.path(), &server.registry()).await;
    images
        .remove("team/secret:1", false, &HashMap::new())
        .await
        .unwrap();
    assert_eq!(pull(&images, "team/secret:1").await.0.unwrap(), img.id());

    images.logout(&server.registry()).await.unwrap();
    let e = images.logout("").await.unwrap_err();
    assert!(matches!(e, Error::NotFound(_)), "{e}");
    assert_eq!(
        e.to_string(),
        format!("Not logged in to {}", server.registry())
    );
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&auth_file).unwrap()).unwrap();
    assert_eq!(stored["auths"], serde_json::json!({}));

    // Unreachable registry: a Registry error naming it.
    let e = images
        .login(LoginRequest {
            registry: "127.0.0.1:9".into(),
            username: "u".into(),
            password: "p".into(),
        })
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Registry(_)), "{e}");
    assert!(e.to_string().contains("127.0.0.1:9"), "{e}");
}

/// Pulls of one image at once (the fleet agent pulls side by side) all
/// record it: the read-then-write transaction waits for the other writer
/// instead of failing with "database is locked".
#[tokio::test]
async fn pulls_of_one_image_at_once_all_succeed() {
    let server = start_server(&[]);
    let img = image(&[layer("etc/one", 10)], "/bin/sh", false);
    push(server.port, "team/app", "1.0", &img.upload(), None).await;
    let other = image(&[layer("etc/two", 20)], "/bin/sh", false);
    push(server.port, "team/other", "1.0", &other.upload(), None).await;
    for round in 0..3 {
        let root = tempfile::tempdir().unwrap();
        let images = open_images(root.path(), &server.registry()).await;
        let refs = ["team/app:1.0", "team/other:1.0"];
        let results = futures::future::join_all((0..8).map(|i| pull(&images, refs[i % 2]))).await;
        for (i, (r, _)) in results.into_iter().enumerate() {
            let want = if i % 2 == 0 { img.id() } else { other.id() };
            assert_eq!(r.unwrap(), want, "round {round}, pull {i}");
        }
    }
}
