//! End-to-end pull against a real wharf-server on 127.0.0.1: the test
//! pushes a small OCI image (an index over an amd64 and an arm64 manifest,
//! two gzip layers) with plain HTTP calls, then pulls it with the runner's
//! image code (and its safe unpacker) and checks the unpacked files, the
//! skipping of present layers, cleanup after a failed unpack, a layer that
//! tries to escape its directory, and the auth flows.
//!
//! Needs the wharf-server binary (build it with `cargo build -p
//! wharf-server`; `common::server_bin` says where it is looked for);
//! without it the tests fail, saying so.

mod common;

use std::io::Read;
use std::path::Path;
use std::sync::{Arc, Mutex};

use common::{
    GZIP_LAYER, OCI_INDEX, OCI_MANIFEST, Upload, count, gzip, push, sha, start_server, tar_of,
};
use wharf_runner::image::Platform;
use wharf_runner::image::client::{
    ClientConfig, Credentials, RegistryClient, install_crypto_provider,
};
use wharf_runner::image::pull::{
    LayerUnpacker, Progress, ProgressEvent, PullError, SafeUnpacker, pull,
};
use wharf_runner::image::reference::Reference;
use wharf_runner::image::store::Store;

struct TestImage {
    layers: Vec<(Vec<u8>, String)>, // (gzip bytes, digest)
    amd64_manifest: Vec<u8>,
    index: Vec<u8>,
    blobs: Vec<Vec<u8>>,
    manifests: Vec<Vec<u8>>, // pushed by digest before the index
}

fn test_image() -> TestImage {
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 253) as u8).collect();
    let tars = [
        tar_of(&[
            ("etc/hello", b"hello from layer 1\n"),
            ("etc/only1", b"one"),
        ]),
        tar_of(&[("etc/hello", b"layer 2\n"), ("app/data", &big)]),
    ];
    let layers: Vec<(Vec<u8>, String)> = tars
        .iter()
        .map(|t| {
            let g = gzip(t);
            let d = sha(&g);
            (g, d)
        })
        .collect();
    let diff_ids: Vec<String> = tars.iter().map(|t| sha(t)).collect();
    let config_for = |arch: &str| {
        serde_json::json!({
            "architecture": arch, "os": "linux",
            "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        })
        .to_string()
        .into_bytes()
    };
    let manifest_for = |config: &[u8]| {
        serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": sha(config), "size": config.len()},
            "layers": layers.iter().map(|(g, d)| serde_json::json!(
                {"mediaType": GZIP_LAYER, "digest": d, "size": g.len()})).collect::<Vec<_>>(),
        })
        .to_string()
        .into_bytes()
    };
    let (c_amd, c_arm) = (config_for("amd64"), config_for("arm64"));
    let (m_amd, m_arm) = (manifest_for(&c_amd), manifest_for(&c_arm));
    let index = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": sha(&m_arm), "size": m_arm.len(),
             "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"mediaType": OCI_MANIFEST, "digest": sha(&m_amd), "size": m_amd.len(),
             "platform": {"os": "linux", "architecture": "amd64"}},
        ]
    })
    .to_string()
    .into_bytes();
    let mut blobs: Vec<Vec<u8>> = layers.iter().map(|(g, _)| g.clone()).collect();
    blobs.push(c_amd);
    blobs.push(c_arm);
    TestImage {
        layers,
        amd64_manifest: m_amd.clone(),
        index,
        blobs,
        manifests: vec![m_amd, m_arm],
    }
}

impl TestImage {
    fn upload(&self) -> Upload<'_> {
        Upload {
            blobs: self.blobs.iter().map(Vec::as_slice).collect(),
            manifests: self.manifests.iter().map(Vec::as_slice).collect(),
            tagged: &self.index,
            tagged_type: OCI_INDEX,
        }
    }
}

fn safe_unpacker() -> Arc<dyn LayerUnpacker> {
    Arc::new(SafeUnpacker)
}

/// Fails on the layer that holds `app/data`, naming the entry.
fn failing_unpacker() -> Arc<dyn LayerUnpacker> {
    Arc::new(
        |r: &mut dyn Read, dest: &Path| -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
            let mut a = tar::Archive::new(r);
            for e in a.entries()? {
                let mut e = e?;
                let p = e.path()?.to_string_lossy().into_owned();
                if p == "app/data" {
                    return Err(format!("entry {p}: refused by the test").into());
                }
                e.unpack_in(dest)?;
            }
            Ok(())
        },
    )
}

#[derive(Default)]
struct Recorder(Mutex<Vec<String>>);

impl Progress for Recorder {
    fn event(&self, e: ProgressEvent<'_>) {
        let s = match e {
            ProgressEvent::Resolved { layers, .. } => format!("resolved {layers}"),
            ProgressEvent::LayerExists { digest, .. } => format!("exists {digest}"),
            ProgressEvent::LayerStarted { digest, .. } => format!("started {digest}"),
            ProgressEvent::LayerBytes { .. } => return,
            ProgressEvent::LayerDone { digest } => format!("done {digest}"),
            ProgressEvent::Done { .. } => "finished".into(),
        };
        self.0.lock().unwrap().push(s);
    }
}

impl Recorder {
    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

#[tokio::test]
async fn pulls_an_image_from_wharf_server() {
    let server = start_server(&[]);
    let img = test_image();
    push(server.port, "team/app", "1.0", &img.upload(), None).await;

    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap().without_sync();
    let client = RegistryClient::new(ClientConfig::default()).unwrap();
    let amd64 = Platform::new("linux", "amd64", None);
    let reference = Reference::parse(&format!("127.0.0.1:{}/team/app:1.0", server.port)).unwrap();
    let rec = Recorder::default();

    let pulled = pull(&client, &store, &reference, &amd64, safe_unpacker(), &rec)
        .await
        .unwrap();
    assert_eq!(pulled.manifest_digest, sha(&img.amd64_manifest));
    assert_eq!(
        pulled.index_digest.as_deref(),
        Some(sha(&img.index).as_str())
    );
    assert_eq!(pulled.config.architecture().to_string(), "amd64");
    assert_eq!(
        pulled.config.config().as_ref().unwrap().cmd().as_deref(),
        Some(&["/bin/sh".to_string()][..])
    );
    assert_eq!(pulled.layers.len(), 2);
    let read = |i: usize, p: &str| std::fs::read(pulled.layers[i].join(p)).unwrap();
    assert_eq!(read(0, "etc/hello"), b"hello from layer 1\n");
    assert_eq!(read(0, "etc/only1"), b"one");
    assert_eq!(read(1, "etc/hello"), b"layer 2\n");
    assert_eq!(read(1, "app/data").len(), 300_000);
    for (i, (_, d)) in img.layers.iter().enumerate() {
        assert_eq!(&pulled.layer_digests[i], d);
        assert!(store.has_layer(d));
        let link = store.layer_link(d).unwrap();
        assert!(root.path().join(link).join("etc/hello").is_file());
    }
    assert!(store.has_blob(&pulled.manifest_digest));
    assert!(store.has_blob(&pulled.config_digest));
    let events = rec.take();
    assert_eq!(events.first().map(String::as_str), Some("resolved 2"));
    assert_eq!(events.iter().filter(|e| e.starts_with("done ")).count(), 2);
    assert_eq!(count(&root.path().join("tmp")), 0);

    // A second pull fetches no layer.
    let again = pull(&client, &store, &reference, &amd64, safe_unpacker(), &rec)
        .await
        .unwrap();
    assert_eq!(again.layers, pulled.layers);
    let events = rec.take();
    assert_eq!(
        events.iter().filter(|e| e.starts_with("exists ")).count(),
        2
    );
    assert!(
        !events.iter().any(|e| e.starts_with("started ")),
        "{events:?}"
    );

    // By digest, and the arm64 entry of the index.
    let by_digest = reference.with_digest(&pulled.manifest_digest);
    let p = pull(&client, &store, &by_digest, &amd64, safe_unpacker(), &rec)
        .await
        .unwrap();
    assert_eq!(p.manifest_digest, pulled.manifest_digest);
    let arm = Platform::new("linux", "arm64", Some("v8"));
    let p = pull(&client, &store, &reference, &arm, safe_unpacker(), &rec)
        .await
        .unwrap();
    assert_eq!(p.config.architecture().to_string(), "arm64");

    // Errors name what is at fault.
    let missing = Reference::parse(&format!("127.0.0.1:{}/team/app:nope", server.port)).unwrap();
    let e = pull(&client, &store, &missing, &amd64, safe_unpacker(), &rec)
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(e, format!("image not found: {missing}"));
    let e = pull(
        &client,
        &store,
        &reference,
        &Platform::new("linux", "s390x", None),
        safe_unpacker(),
        &rec,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("linux/s390x") && e.contains("linux/amd64"),
        "{e}"
    );
}

#[tokio::test]
async fn a_failed_unpack_leaves_no_partial_layer_and_a_retry_resumes() {
    let server = start_server(&[]);
    let img = test_image();
    push(server.port, "team/fail", "1.0", &img.upload(), None).await;
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap().without_sync();
    let client = RegistryClient::new(ClientConfig::default()).unwrap();
    let amd64 = Platform::new("linux", "amd64", None);
    let reference = Reference::parse(&format!("127.0.0.1:{}/team/fail:1.0", server.port)).unwrap();
    let rec = Recorder::default();

    let err = pull(
        &client,
        &store,
        &reference,
        &amd64,
        failing_unpacker(),
        &rec,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, PullError::Unpack { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&img.layers[1].1) && msg.contains("app/data"),
        "{msg}"
    );
    assert!(!store.has_layer(&img.layers[1].1));
    assert_eq!(count(&root.path().join("tmp")), 0, "temp dirs left behind");
    // Only complete layers are in layers/ (at most the first one).
    assert!(count(&root.path().join("layers")) <= 1);

    rec.take();
    let pulled = pull(&client, &store, &reference, &amd64, safe_unpacker(), &rec)
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(pulled.layers[1].join("etc/hello")).unwrap(),
        b"layer 2\n"
    );
    let events = rec.take();
    let first_was_kept = store.has_layer(&img.layers[0].1)
        && events.contains(&format!("exists {}", img.layers[0].1));
    let first_refetched = events.contains(&format!("done {}", img.layers[0].1));
    assert!(first_was_kept || first_refetched, "{events:?}");
}

#[tokio::test]
async fn bearer_auth_with_and_without_the_right_password() {
    let server = start_server(&[
        ("WHARF_AUTH_ENABLED", "true"),
        ("WHARF_ADMIN_PASSWORD", "right-password-1"),
    ]);
    let img = test_image();
    // A push token for the admin, from the token endpoint.
    install_crypto_provider();
    let http = reqwest::Client::new();
    let tok: serde_json::Value = http
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
    let token = tok["token"].as_str().expect("token").to_string();
    push(
        server.port,
        "team/secret",
        "1.0",
        &img.upload(),
        Some(&token),
    )
    .await;

    let registry = format!("127.0.0.1:{}", server.port);
    let reference = Reference::parse(&format!("{registry}/team/secret:1.0")).unwrap();
    let amd64 = Platform::new("linux", "amd64", None);
    let root = tempfile::tempdir().unwrap();
    let store = Store::open(root.path()).unwrap().without_sync();
    let with = |password: &str| {
        let mut c = ClientConfig::default();
        c.credentials.insert(
            registry.clone(),
            Credentials {
                username: "admin".into(),
                password: password.into(),
            },
        );
        RegistryClient::new(c).unwrap()
    };

    let e = pull(
        &with("wrong"),
        &store,
        &reference,
        &amd64,
        safe_unpacker(),
        &Recorder::default(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert_eq!(e, format!("wrong username or password for {registry}"));

    let anonymous = RegistryClient::new(ClientConfig::default()).unwrap();
    let e = pull(
        &anonymous,
        &store,
        &reference,
        &amd64,
        safe_unpacker(),
        &Recorder::default(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains(&registry) && e.contains("authentication"), "{e}");

    let pulled = pull(
        &with("right-password-1"),
        &store,
        &reference,
        &amd64,
        safe_unpacker(),
        &Recorder::default(),
    )
    .await
    .unwrap();
    assert_eq!(
        std::fs::read(pulled.layers[0].join("etc/only1")).unwrap(),
        b"one"
    );
}

/// A one-layer image whose tar holds `../escape` (written into the header
/// by hand: the tar crate's builder refuses such paths).
fn evil_image() -> TestImage {
    let data = b"owned";
    let mut h = tar::Header::new_old();
    let name = b"../escape";
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, &data[..]).unwrap();
    let t = b.into_inner().unwrap();
    let g = gzip(&t);
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [sha(&t)]},
    })
    .to_string()
    .into_bytes();
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha(&config), "size": config.len()},
        "layers": [{"mediaType": GZIP_LAYER, "digest": sha(&g), "size": g.len()}],
    })
    .to_string()
    .into_bytes();
    let index = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": sha(&manifest), "size": manifest.len(),
                       "platform": {"os": "linux", "architecture": "amd64"}}],
    })
    .to_string()
    .into_bytes();
    TestImage {
        layers: vec![(g.clone(), sha(&g))],
        amd64_manifest: manifest.clone(),
        index,
        blobs: vec![g, config],
        manifests: vec![manifest],
    }
}

#[tokio::test]
async fn a_layer_escaping_its_directory_fails_the_pull() {
    let server = start_server(&[]);
    let img = evil_image();
    push(server.port, "team/evil", "1", &img.upload(), None).await;
    let root = tempfile::tempdir().unwrap();
    // The layer's dir is root/tmp/layer-*/diff, so "../escape" would land
    // in root/tmp/layer-*/escape; check the whole store for it.
    let store = Store::open(root.path()).unwrap().without_sync();
    let client = RegistryClient::new(ClientConfig::default()).unwrap();
    let reference = Reference::parse(&format!("127.0.0.1:{}/team/evil:1", server.port)).unwrap();
    let err = pull(
        &client,
        &store,
        &reference,
        &Platform::new("linux", "amd64", None),
        safe_unpacker(),
        &Recorder::default(),
    )
    .await
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, PullError::Unpack { .. }), "{msg}");
    assert!(
        msg.contains(&img.layers[0].1) && msg.contains("../escape"),
        "{msg}"
    );
    assert!(!store.has_layer(&img.layers[0].1));
    assert_eq!(count(&root.path().join("tmp")), 0);
    assert_eq!(count(&root.path().join("layers")), 0);
    let found = std::process::Command::new("find")
        .arg(root.path())
        .args(["-name", "escape"])
        .output()
        .unwrap();
    assert!(found.stdout.is_empty(), "{:?}", found);
}
