//! Harness for the HTTP integration tests: a wharf server started in-process
//! on a loopback port over a temporary data directory, a client that reads
//! whole responses, and builders for blobs and manifests.
//!
//! Every response that goes through [`Server::send`] is checked for the
//! `Docker-Distribution-API-Version` header, so each test also checks that
//! rule for every request it makes.
//!
//! The catalog is SQLite in the data directory, or, when the environment
//! names a PostgreSQL server in `WHARF_TEST_POSTGRES_URL`
//! (`postgres://postgres@127.0.0.1:PORT/postgres`, as `scripts/test` starts
//! one), a database of its own per server, created for it and dropped after
//! ([`TestDb`]).
//!
//! Scale-out runs (scripts/test runs `distribution_spec` again with them):
//! - `WHARF_TEST_S3_ENDPOINT=http://127.0.0.1:PORT`: blobs on that
//!   S3-compatible server (moto in scripts/test), a fresh bucket per server;
//! - `WHARF_TEST_REPLICAS=N`: N servers (each with its own state, as separate
//!   processes would have) on the same catalog and store, and every request
//!   goes to the next one in turn, so each multi-request flow crosses
//!   replicas. Only on S3: the filesystem and memory backends belong to one
//!   process (a test that picks one of them gets one server). Meant
//!   for `distribution_spec`: the `auth` suite checks that a challenge's
//!   realm names the server that answered and that the (per-process)
//!   failed-login limiter trips, which a set of replicas does not satisfy.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::HeaderMap;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{Value, json};
use sha2::Digest as _;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use wharf_server::Settings;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// The error codes the spec allows ("The code field MUST be one of the
/// following").
pub const SPEC_ERROR_CODES: &[&str] = &[
    "BLOB_UNKNOWN",
    "BLOB_UPLOAD_INVALID",
    "BLOB_UPLOAD_UNKNOWN",
    "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID",
    "MANIFEST_UNKNOWN",
    "NAME_INVALID",
    "NAME_UNKNOWN",
    "SIZE_INVALID",
    "UNAUTHORIZED",
    "DENIED",
    "UNSUPPORTED",
    "TOOMANYREQUESTS",
];

// ---- digests and content ------------------------------------------------------

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

pub fn sha512(data: &[u8]) -> String {
    format!("sha512:{}", hex::encode(sha2::Sha512::digest(data)))
}

/// `len` bytes that are not all alike, different for each `seed`.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(seed as u32 * 7) as u8)
        .collect()
}

/// A descriptor, as manifests refer to content.
#[derive(Clone, Debug)]
pub struct Desc {
    pub media_type: String,
    pub digest: String,
    pub size: usize,
}

impl Desc {
    pub fn of(media_type: &str, content: &[u8]) -> Desc {
        Desc {
            media_type: media_type.to_owned(),
            digest: sha256(content),
            size: content.len(),
        }
    }

    pub fn json(&self) -> Value {
        json!({ "mediaType": self.media_type, "digest": self.digest, "size": self.size })
    }
}

/// An image manifest of `media_type` (OCI or Docker schema 2).
pub fn image_manifest(media_type: &str, config: &Desc, layers: &[Desc]) -> Value {
    json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": config.json(),
        "layers": layers.iter().map(Desc::json).collect::<Vec<_>>(),
    })
}

pub fn to_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("serialize JSON")
}

/// An image pushed by [`Server::push_image`].
#[derive(Clone, Debug)]
pub struct Image {
    pub manifest: Vec<u8>,
    pub digest: String,
    pub config: Desc,
    pub layer: Desc,
}

impl Image {
    pub fn desc(&self) -> Desc {
        Desc::of(OCI_MANIFEST, &self.manifest)
    }
}

// ---- responses -----------------------------------------------------------------

/// A whole response: status, headers and the body read to its end.
#[derive(Debug)]
pub struct Resp {
    pub what: String,
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    #[track_caller]
    pub fn must_header(&self, name: &str) -> &str {
        match self.header(name) {
            Some(v) => v,
            None => panic!("{}: no {name} header in {self}", self.what),
        }
    }

    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{}: body is not JSON ({e}): {self}", self.what))
    }

    /// Asserts the status and returns the response.
    #[track_caller]
    pub fn expect(self, status: u16) -> Resp {
        assert_eq!(
            self.status.as_u16(),
            status,
            "{}: expected {status}, got {self}",
            self.what
        );
        self
    }

    /// Asserts an error answer: the status, and a JSON body
    /// `{"errors":[{"code": code, ...}]}`. Returns the first error.
    #[track_caller]
    pub fn expect_error(&self, status: u16, code: &str) -> Value {
        assert_eq!(
            self.status.as_u16(),
            status,
            "{}: expected {status} {code}, got {self}",
            self.what
        );
        let codes = self.error_codes();
        assert!(
            codes.iter().any(|c| c == code),
            "{}: expected error code {code}, got {codes:?} in {self}",
            self.what
        );
        self.json()["errors"][0].clone()
    }

    /// The `code`s of a JSON error body (empty when there is none).
    pub fn error_codes(&self) -> Vec<String> {
        let Ok(v) = serde_json::from_slice::<Value>(&self.body) else {
            return Vec::new();
        };
        v["errors"]
            .as_array()
            .map(|errs| {
                errs.iter()
                    .filter_map(|e| e["code"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The target of a `Link: <url>; rel="next"` header.
    pub fn next_link(&self) -> Option<String> {
        let link = self.header("link")?;
        link.split(',').find_map(|part| {
            let (target, params) = part.trim().split_once(';')?;
            params.contains("rel=\"next\"").then(|| {
                target
                    .trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_owned()
            })
        })
    }

    #[track_caller]
    pub fn location(&self) -> String {
        self.must_header("location").to_owned()
    }
}

impl std::fmt::Display for Resp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut body = String::from_utf8_lossy(&self.body).into_owned();
        if body.len() > 600 {
            body.truncate(600);
            body.push_str("...");
        }
        write!(f, "{} {:?} body={body:?}", self.status, self.headers)
    }
}

/// Appends `key=value` to a URL that may already have a query.
pub fn with_query(url: &str, key: &str, value: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{key}={value}")
}

// ---- the catalog database --------------------------------------------------------

/// The variable naming the PostgreSQL server the tests use instead of SQLite.
pub const POSTGRES_URL_VAR: &str = "WHARF_TEST_POSTGRES_URL";

/// A fresh PostgreSQL database (`wharf_test_<pid>_<n>_<nanos>`), dropped
/// (with its connections) when this is dropped. Its default collation is
/// ICU en-US when the server has ICU, so the catalog's byte-order rules are
/// tested against a locale that does not sort by bytes.
pub struct TestDb {
    admin_url: String,
    name: String,
    pub url: String,
}

impl TestDb {
    /// A new database when `WHARF_TEST_POSTGRES_URL` is set, else `None`.
    pub async fn create() -> Option<TestDb> {
        use sqlx::Connection as _;
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let admin_url = std::env::var(POSTGRES_URL_VAR)
            .ok()
            .filter(|u| !u.is_empty())?;
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let name = format!("wharf_test_{}_{n}_{nanos}", std::process::id());
        let mut conn = sqlx::PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("connect to {POSTGRES_URL_VAR}: {e}"));
        let icu = format!(
            "CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8' \
             LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
        );
        if sqlx::raw_sql(sqlx::AssertSqlSafe(icu))
            .execute(&mut conn)
            .await
            .is_err()
        {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut conn)
                .await
                .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        }
        let _ = conn.close().await;
        let base = admin_url.split('?').next().unwrap_or(&admin_url);
        let (server, _) = base.rsplit_once('/').expect("a database in the URL");
        let url = format!("{server}/{name}");
        Some(TestDb {
            admin_url,
            name,
            url,
        })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        use sqlx::Connection as _;
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // On a thread of its own: drop may run inside a tokio runtime.
        let done = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&admin_url).await.ok()?;
                let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(&mut conn)
                    .await
                    .ok()
            })
        });
        let _ = done.join();
    }
}

/// Points `settings` at a fresh PostgreSQL database when the tests run on
/// PostgreSQL; keep the returned handle as long as the database is used.
pub async fn use_test_catalog(settings: &mut Settings) -> Option<Arc<TestDb>> {
    let db = TestDb::create().await?;
    settings.catalog.url = Some(db.url.clone());
    Some(Arc::new(db))
}

// ---- the server ------------------------------------------------------------------

pub struct Server {
    /// The first replica (raw connections go there).
    pub addr: SocketAddr,
    client: reqwest::Client,
    settings: Settings,
    dir: Arc<TempDir>,
    /// The PostgreSQL database of these servers, if any; dropped after the
    /// tasks are aborted (fields drop after `Drop::drop`).
    db: Option<Arc<TestDb>>,
    replicas: Replicas,
}

/// The running servers on one catalog and store; requests take turns.
struct Replicas {
    bases: Vec<String>,
    tasks: Vec<JoinHandle<()>>,
    next: std::sync::atomic::AtomicUsize,
}

impl Replicas {
    async fn launch(settings: &Settings) -> Replicas {
        // The filesystem and memory backends belong to one process.
        let n = if settings.storage.backend == wharf_server::config::StorageBackend::S3 {
            test_replicas()
        } else {
            1
        };
        let mut bases = Vec::new();
        let mut tasks = Vec::new();
        for _ in 0..n {
            let (addr, task) = launch(settings).await;
            bases.push(format!("http://{addr}"));
            tasks.push(task);
        }
        Replicas {
            bases,
            tasks,
            next: Default::default(),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.bases[0]
            .trim_start_matches("http://")
            .parse()
            .expect("replica address")
    }

    /// The base URL of the replica whose turn it is.
    fn next_base(&self) -> &str {
        let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        &self.bases[i % self.bases.len()]
    }

    async fn stop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        for t in self.tasks.iter_mut() {
            let _ = t.await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        for t in &self.replicas.tasks {
            t.abort();
        }
    }
}

/// `WHARF_TEST_REPLICAS` (default 1).
fn test_replicas() -> usize {
    std::env::var("WHARF_TEST_REPLICAS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n >= 1)
        .unwrap_or(1)
}

/// With `WHARF_TEST_S3_ENDPOINT`, a server on the default filesystem backend
/// keeps its blobs in a new bucket on that endpoint instead.
async fn use_test_s3(settings: &mut Settings) {
    use wharf_server::config::{Secret, StorageBackend};
    let Ok(endpoint) = std::env::var("WHARF_TEST_S3_ENDPOINT") else {
        return;
    };
    if settings.storage.backend != StorageBackend::Filesystem {
        return;
    }
    let endpoint = endpoint.trim_end_matches('/').to_owned();
    let bucket = format!("wharf-test-{}", uuid::Uuid::new_v4().simple());
    // moto creates buckets on an unsigned request; real stores are set up
    // by their operator.
    let r = client()
        .put(format!("{endpoint}/{bucket}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("create bucket {bucket} on {endpoint}: {e}"));
    assert!(
        r.status().is_success(),
        "create bucket {bucket} on {endpoint}: {}",
        r.status()
    );
    let s = &mut settings.storage;
    s.backend = StorageBackend::S3;
    s.endpoint = Some(endpoint);
    s.bucket = Some(bucket);
    s.region = Some("us-east-1".into());
    s.access_key_id = Some("testing".into());
    s.secret_access_key = Some(Secret("testing".into()));
    s.allow_http = true;
}

/// The workspace's reqwest is built without a default TLS provider (the
/// runner picks ring); plain-HTTP clients still need one installed.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn client() -> reqwest::Client {
    install_crypto_provider();
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .expect("build the HTTP client")
}

async fn launch(settings: &Settings) -> (SocketAddr, JoinHandle<()>) {
    let state = wharf_server::build_state(settings)
        .await
        .expect("build the server state");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("listener address");
    let task = tokio::spawn(async move {
        wharf_server::serve_on(listener, wharf_server::app(state), std::future::pending())
            .await
            .expect("serve");
    });
    (addr, task)
}

impl Server {
    /// A server with the default settings (fsync off, for speed).
    pub async fn start() -> Server {
        Server::start_with(|_| {}).await
    }

    /// A server whose settings `tweak` may change first.
    pub async fn start_with(tweak: impl FnOnce(&mut Settings)) -> Server {
        let dir = tempfile::tempdir().expect("temporary data directory");
        let mut settings = Settings::with_data_dir(dir.path());
        settings.storage.fsync = false;
        let db = use_test_catalog(&mut settings).await;
        tweak(&mut settings);
        use_test_s3(&mut settings).await;
        let replicas = Replicas::launch(&settings).await;
        Server {
            addr: replicas.addr(),
            client: client(),
            settings,
            dir: Arc::new(dir),
            replicas,
            db,
        }
    }

    /// Stops this server and starts a new one (new state, new listener, new
    /// client) on the same data directory.
    pub async fn restart(&mut self) {
        self.restart_after(Duration::from_millis(50)).await;
    }

    /// [`Server::restart`] with the server away for `pause` in between.
    pub async fn restart_after(&mut self, pause: Duration) {
        // Dropping the old client closes its pooled connections, which ends
        // the connection tasks that still hold the old state.
        self.client = client();
        self.replicas.stop().await;
        tokio::time::sleep(pause).await;
        self.replicas = Replicas::launch(&self.settings).await;
        self.addr = self.replicas.addr();
    }

    /// The base URLs of the running replicas (one unless
    /// `WHARF_TEST_REPLICAS` asks for more on S3).
    pub fn replica_bases(&self) -> &[String] {
        &self.replicas.bases
    }

    /// A second server on the same settings — the same data directory and
    /// catalog (SQLite file or PostgreSQL database) — as a replica would be.
    /// (Unlike `WHARF_TEST_REPLICAS`, it does not take turns with this one:
    /// the test says which server each request goes to.)
    pub async fn start_sibling(&self) -> Server {
        let (addr, task) = launch(&self.settings).await;
        Server {
            addr,
            client: client(),
            settings: self.settings.clone(),
            dir: self.dir.clone(),
            replicas: Replicas {
                bases: vec![format!("http://{addr}")],
                tasks: vec![task],
                next: Default::default(),
            },
            db: self.db.clone(),
        }
    }

    pub fn data_dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The size of the object the store holds under a blob's key, read from
    /// the store itself (files of the filesystem backend, or the S3 bucket).
    pub async fn stored_blob_size(&self, digest: &str) -> Option<u64> {
        use wharf_server::store::BlobStore;
        assert!(
            self.settings.storage.backend != wharf_server::config::StorageBackend::Memory,
            "the memory store is not reachable from outside"
        );
        let digest: wharf_server::digest::Digest = digest.parse().expect("a digest");
        let store = BlobStore::open(&self.settings)
            .await
            .expect("open the store");
        store
            .size(&BlobStore::blob_key(&digest))
            .await
            .expect("stat the blob")
    }

    /// An absolute URL for a path or a (relative or absolute) Location, on
    /// the replica whose turn it is (an absolute URL of one of them is moved
    /// to it too).
    pub fn url(&self, path: &str) -> String {
        let base = self.replicas.next_base();
        if let Some(rest) = self
            .replicas
            .bases
            .iter()
            .find_map(|b| path.strip_prefix(b.as_str()))
        {
            format!("{base}{rest}")
        } else if path.starts_with("http://") || path.starts_with("https://") {
            path.to_owned()
        } else {
            format!("{base}{path}")
        }
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.url(path))
    }

    /// Sends a request and reads the whole response; `Err` when the
    /// connection failed (e.g. the server dropped it).
    pub async fn try_send(&self, rb: RequestBuilder) -> Result<Resp, String> {
        let req = rb.build().map_err(|e| format!("bad request: {e}"))?;
        let what = format!("{} {}", req.method(), req.url().path());
        let resp = self
            .client
            .execute(req)
            .await
            .map_err(|e| format!("{what}: request failed: {e:?}"))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .bytes()
            .await
            .map_err(|e| format!("{what}: reading the body failed: {e:?}"))?;
        Ok(Resp {
            what,
            status,
            headers,
            body,
        })
    }

    /// Sends a request, reads the whole response and checks that it carries
    /// `Docker-Distribution-API-Version: registry/2.0`.
    #[track_caller]
    pub fn send(&self, rb: RequestBuilder) -> impl Future<Output = Resp> + '_ {
        let caller = std::panic::Location::caller();
        async move {
            let resp = match self.try_send(rb).await {
                Ok(r) => r,
                Err(e) => panic!("{e} (called at {caller})"),
            };
            assert_eq!(
                resp.header("docker-distribution-api-version"),
                Some("registry/2.0"),
                "{}: no Docker-Distribution-API-Version header: {resp} (called at {caller})",
                resp.what
            );
            resp
        }
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send(self.request(Method::GET, path)).await
    }

    pub async fn head(&self, path: &str) -> Resp {
        self.send(self.request(Method::HEAD, path)).await
    }

    pub async fn delete(&self, path: &str) -> Resp {
        self.send(self.request(Method::DELETE, path)).await
    }

    /// POST with a body (sent with its Content-Length).
    pub async fn post(&self, path: &str, body: impl Into<Vec<u8>>) -> Resp {
        let body = body.into();
        let rb = self
            .request(Method::POST, path)
            .header("content-type", "application/octet-stream")
            .header("content-length", body.len())
            .body(body);
        self.send(rb).await
    }

    /// PUT of blob bytes (an upload's closing request).
    pub async fn put_bytes(&self, path: &str, body: impl Into<Vec<u8>>) -> Resp {
        let body = body.into();
        let rb = self
            .request(Method::PUT, path)
            .header("content-type", "application/octet-stream")
            .header("content-length", body.len())
            .body(body);
        self.send(rb).await
    }

    /// PATCH of one chunk, with a `Content-Range` when given.
    pub async fn patch(&self, location: &str, chunk: &[u8], range: Option<&str>) -> Resp {
        let mut rb = self
            .request(Method::PATCH, location)
            .header("content-type", "application/octet-stream")
            .header("content-length", chunk.len())
            .body(chunk.to_vec());
        if let Some(range) = range {
            rb = rb.header("content-range", range);
        }
        self.send(rb).await
    }

    /// PATCH whose body is streamed (chunked transfer encoding, no
    /// Content-Length, no Content-Range).
    pub async fn patch_streamed(&self, location: &str, pieces: Vec<Vec<u8>>) -> Resp {
        let stream = futures::stream::iter(
            pieces
                .into_iter()
                .map(|p| Ok::<_, std::io::Error>(Bytes::from(p))),
        );
        let rb = self
            .request(Method::PATCH, location)
            .header("content-type", "application/octet-stream")
            .body(reqwest::Body::wrap_stream(stream));
        self.send(rb).await
    }

    /// Opens an upload session; returns its Location.
    pub async fn start_upload(&self, repo: &str) -> String {
        let r = self
            .send(
                self.request(Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
                    .header("content-length", "0"),
            )
            .await
            .expect(202);
        r.location()
    }

    /// Pushes a blob in one `POST ?digest=`; returns its digest.
    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let digest = sha256(data);
        let r = self
            .post(
                &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
                data.to_vec(),
            )
            .await;
        assert_eq!(r.status, 201, "push_blob {repo} {digest}: {r}");
        digest
    }

    /// PUT of a manifest, with its Content-Type; the response unchecked.
    pub async fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Resp {
        let rb = self
            .request(Method::PUT, &format!("/v2/{repo}/manifests/{reference}"))
            .header("content-type", media_type)
            .body(body.to_vec());
        self.send(rb).await
    }

    /// PUT of a manifest that must succeed; returns the digest it got.
    pub async fn push_manifest_ok(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> String {
        let r = self.push_manifest(repo, reference, media_type, body).await;
        assert_eq!(r.status, 201, "push_manifest {repo}:{reference}: {r}");
        r.must_header("docker-content-digest").to_owned()
    }

    /// Pushes a config blob, a layer blob and an OCI image manifest under
    /// `tag`. `seed` makes the content (and so the digests) unique.
    pub async fn push_image(&self, repo: &str, tag: &str, seed: u8) -> Image {
        let config_bytes = to_bytes(&json!({
            "architecture": "amd64",
            "os": "linux",
            "rootfs": { "type": "layers", "diff_ids": [] },
            "seed": seed,
        }));
        let layer_bytes = pattern(700 + seed as usize, seed);
        self.push_blob(repo, &config_bytes).await;
        self.push_blob(repo, &layer_bytes).await;
        let config = Desc::of(OCI_CONFIG, &config_bytes);
        let layer = Desc::of(OCI_LAYER, &layer_bytes);
        let manifest = to_bytes(&image_manifest(
            OCI_MANIFEST,
            &config,
            std::slice::from_ref(&layer),
        ));
        let digest = self
            .push_manifest_ok(repo, tag, OCI_MANIFEST, &manifest)
            .await;
        assert_eq!(digest, sha256(&manifest));
        Image {
            manifest,
            digest,
            config,
            layer,
        }
    }

    /// Writes raw bytes on a fresh connection and returns the status of the
    /// answer; `None` when the server closed the connection without one.
    pub async fn raw(&self, request: &[u8]) -> Result<Option<u16>, String> {
        let mut stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        stream
            .write_all(request)
            .await
            .map_err(|e| format!("write: {e}"))?;
        let mut answer = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            let mut buf = [0u8; 4096];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => {
                        answer.extend_from_slice(&buf[..n]);
                        // The status line is all we need.
                        if answer.windows(2).any(|w| w == b"\r\n") {
                            break;
                        }
                    }
                    // A reset after a partial answer still has its status line.
                    Err(_) if !answer.is_empty() => break,
                    Err(e) => return Err(format!("read: {e}")),
                }
            }
            Ok(())
        })
        .await;
        match read {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err("no answer within 10s".into()),
        }
        if answer.is_empty() {
            return Ok(None);
        }
        let text = String::from_utf8_lossy(&answer);
        text.split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .map(Some)
            .ok_or_else(|| format!("no status line in {text:?}"))
    }
}

// ---- auth -------------------------------------------------------------------------

impl Server {
    /// A server with auth on. `tweak` may change the settings first; `setup`
    /// then runs on the catalog before the server starts (to create users,
    /// grants, public patterns and robots: with auth on and no user,
    /// `build_state` refuses to start). Returns what `setup` returned.
    pub async fn start_auth<T>(
        tweak: impl FnOnce(&mut Settings),
        setup: impl AsyncFnOnce(&wharf_server::catalog::Catalog) -> T,
    ) -> (Server, T) {
        let dir = tempfile::tempdir().expect("temporary data directory");
        let mut settings = Settings::with_data_dir(dir.path());
        settings.storage.fsync = false;
        settings.auth.enabled = true;
        let db = use_test_catalog(&mut settings).await;
        tweak(&mut settings);
        use_test_s3(&mut settings).await;
        std::fs::create_dir_all(&settings.data_dir).expect("create the data directory");
        let catalog = wharf_server::catalog::Catalog::open(&settings.catalog_url())
            .await
            .expect("open the catalog");
        let out = setup(&catalog).await;
        drop(catalog);
        let replicas = Replicas::launch(&settings).await;
        let srv = Server {
            addr: replicas.addr(),
            client: client(),
            settings,
            dir: Arc::new(dir),
            replicas,
            db,
        };
        (srv, out)
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// A second handle on the running server's catalog (SQLite in WAL mode,
    /// or its PostgreSQL database), as the admin CLI opens it beside a live
    /// server.
    pub async fn catalog(&self) -> wharf_server::catalog::Catalog {
        wharf_server::catalog::Catalog::open(&self.settings.catalog_url())
            .await
            .expect("open the catalog")
    }

    /// A request carrying `Authorization: Bearer <token>` when given.
    pub fn request_as(&self, token: Option<&str>, method: Method, path: &str) -> RequestBuilder {
        let rb = self.request(method, path);
        match token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }
}
