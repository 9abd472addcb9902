//! The harness the image tests (`pull.rs`, `images.rs`) share: a real
//! wharf-server on 127.0.0.1 with a throwaway data dir, the helpers that
//! build layers (tar, gzip, digests) and `push`, which uploads an image
//! with plain HTTP calls.
//!
//! Needs the wharf-server binary (build it with `cargo build -p
//! wharf-server`); see [`server_bin`] for where it is looked for.

// Each test binary that declares `mod common;` uses a different subset of
// these helpers; without this the unused ones would warn (and fail clippy's
// `-D warnings`) in the other binary.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wharf_runner::image::client::install_crypto_provider;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const GZIP_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// The wharf-server binary: `$WHARF_SERVER_BIN` when set (it must exist),
/// else `wharf-server` beside the test binary's directory (the
/// `target/debug/` this test was built in), else
/// `$CARGO_TARGET_DIR/debug/wharf-server`. Panics naming the places looked
/// at when none holds it.
pub fn server_bin() -> PathBuf {
    if let Ok(p) = std::env::var("WHARF_SERVER_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "WHARF_SERVER_BIN={} is not a file: build wharf-server first (`cargo build -p wharf-server`)",
            p.display()
        );
        return p;
    }
    // target/debug/deps/<test>-<hash> -> target/debug/wharf-server
    let exe = std::env::current_exe().expect("current_exe");
    let beside = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("wharf-server"));
    let in_target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(|d| PathBuf::from(d).join("debug").join("wharf-server"));
    for c in beside.iter().chain(&in_target_dir) {
        if c.is_file() {
            return c.clone();
        }
    }
    let shown = |p: &Option<PathBuf>| match p {
        Some(p) => p.display().to_string(),
        None => "-".to_string(),
    };
    panic!(
        "wharf-server binary not found: not beside the test binary ({}) nor in \
         $CARGO_TARGET_DIR/debug ({}); build it with `cargo build -p wharf-server` \
         or set WHARF_SERVER_BIN",
        shown(&beside),
        match &in_target_dir {
            Some(_) => shown(&in_target_dir),
            None => "CARGO_TARGET_DIR is not set".to_string(),
        }
    );
}

/// A running wharf-server; killed (and its data dir removed) on drop.
pub struct Server {
    child: Child,
    pub port: u16,
    _data: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// `127.0.0.1:<port>`, as written in references.
    pub fn registry(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// Starts wharf-server on a free port with `env` added to its environment
/// and waits (up to 30 s) until it listens.
pub fn start_server(env: &[(&str, &str)]) -> Server {
    let data = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = Command::new(server_bin());
    cmd.args([
        "serve",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--data-dir",
    ])
    .arg(data.path())
    .env("WHARF_STORAGE_FSYNC", "false")
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("start wharf-server");
    let mut server = Server {
        child,
        port,
        _data: data,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = server.child.try_wait() {
            panic!("wharf-server exited before listening: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "wharf-server did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    server
}

/// `sha256:<hex>` of some bytes.
pub fn sha(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// A tar of (path, contents) regular files.
pub fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, *data).unwrap();
    }
    b.into_inner().unwrap()
}

pub fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

/// How many entries a directory holds.
pub fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

/// What [`push`] uploads for one tag, in this order: the blobs, the
/// manifests by digest (an index's children), then `tagged` (a manifest or
/// an index, of media type `tagged_type`) under the tag.
pub struct Upload<'a> {
    pub blobs: Vec<&'a [u8]>,
    pub manifests: Vec<&'a [u8]>,
    pub tagged: &'a [u8],
    pub tagged_type: &'a str,
}

/// Pushes an image to the server on `port` as `repo:tag` with plain HTTP
/// calls (monolithic blob uploads), with a bearer `token` when given;
/// every call must answer 201.
pub async fn push(port: u16, repo: &str, tag: &str, up: &Upload<'_>, token: Option<&str>) {
    install_crypto_provider();
    let http = reqwest::Client::new();
    let auth = |r: reqwest::RequestBuilder| match token {
        Some(t) => r.bearer_auth(t),
        None => r,
    };
    let base = format!("http://127.0.0.1:{port}/v2/{repo}");
    for b in &up.blobs {
        let r = auth(http.post(format!("{base}/blobs/uploads/?digest={}", sha(b))))
            .header("Content-Type", "application/octet-stream")
            .body(b.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "blob upload: {}", r.text().await.unwrap());
    }
    for m in &up.manifests {
        let r = auth(http.put(format!("{base}/manifests/{}", sha(m))))
            .header("Content-Type", OCI_MANIFEST)
            .body(m.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "manifest put: {}", r.text().await.unwrap());
    }
    let what = if up.tagged_type == OCI_INDEX {
        "index put"
    } else {
        "manifest put"
    };
    let r = auth(http.put(format!("{base}/manifests/{tag}")))
        .header("Content-Type", up.tagged_type)
        .body(up.tagged.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "{what}: {}", r.text().await.unwrap());
}
