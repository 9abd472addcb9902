//! Webhook events end to end within one process: a wharf server configured
//! with `[[webhooks]]`, and a small HTTP receiver (axum on a loopback port)
//! that records what it gets. Checks the JSON body, the HMAC signature with
//! each endpoint's secret, the retry after a first 500, the repository and
//! action filters, pull and delete events, the actor with auth on, and that a
//! receiver that hangs never slows a push.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use common::*;
use hmac::Mac;
use reqwest::Method;
use serde_json::Value;
use wharf_server::Settings;
use wharf_server::config::{EventAction, WebhookSecret, WebhookSettings};

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Received {
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Received {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    fn event(&self) -> Value {
        let v: Value = serde_json::from_slice(&self.body).expect("a JSON body");
        let events = v["events"].as_array().expect("an events array");
        assert_eq!(events.len(), 1, "{v}");
        events[0].clone()
    }
}

#[derive(Default)]
struct Log {
    received: Vec<Received>,
    /// How many more requests on a path get a 500 before it accepts.
    fail_first: HashMap<String, u32>,
}

/// A receiver on a loopback port: `/hang` never answers (within a test);
/// every other path answers 200, or 500 while `fail_first` says so.
struct Receiver {
    addr: SocketAddr,
    log: Arc<Mutex<Log>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(
    State(log): State<Arc<Mutex<Log>>>,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let fail = {
        let mut log = log.lock().unwrap();
        log.received.push(Received {
            path: path.clone(),
            headers,
            body,
        });
        match log.fail_first.get_mut(&path) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    };
    if path == "hang" {
        tokio::time::sleep(Duration::from_secs(600)).await;
    }
    if fail {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    }
}

impl Receiver {
    async fn start() -> Receiver {
        let log = Arc::new(Mutex::new(Log::default()));
        let app = axum::Router::new()
            .route("/{*path}", axum::routing::post(receive))
            .with_state(log.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver { addr, log, task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.addr)
    }

    fn fail_first(&self, path: &str, times: u32) {
        self.log
            .lock()
            .unwrap()
            .fail_first
            .insert(path.to_owned(), times);
    }

    fn on(&self, path: &str) -> Vec<Received> {
        self.log
            .lock()
            .unwrap()
            .received
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// Waits until `path` got at least `n` requests; returns them all.
    async fn wait_for(&self, path: &str, n: usize) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let got = self.on(path);
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{path}: {} of {n} requests after 15 s: {got:?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn hook(
    url: String,
    secret: &str,
    repositories: &[&str],
    actions: &[EventAction],
) -> WebhookSettings {
    WebhookSettings {
        url,
        secret: Some(WebhookSecret(secret.to_owned())),
        secret_file: None,
        repositories: repositories.iter().map(|s| s.to_string()).collect(),
        actions: actions.to_vec(),
        timeout_secs: 5,
        max_retries: 3,
        retry_backoff_ms: 50,
    }
}

/// Checks `X-Wharf-Signature` against an HMAC-SHA256 computed here, with
/// the hmac crate, over the exact bytes received.
fn assert_signed(r: &Received, secret: &str) {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(&r.body);
    let want = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(r.header("x-wharf-signature"), want, "signature of {r:?}");
    assert_eq!(
        r.header("content-type"),
        "application/vnd.docker.distribution.events.v1+json"
    );
    let event = r.event();
    assert_eq!(r.header("x-wharf-event"), event["action"].as_str().unwrap());
    assert_eq!(r.header("x-wharf-delivery"), event["id"].as_str().unwrap());
}

/// Events on `path`, first attempts only (a retry repeats an event id).
fn distinct_events(got: &[Received]) -> Vec<Value> {
    let mut seen = Vec::<String>::new();
    let mut out = Vec::new();
    for r in got {
        let e = r.event();
        let id = e["id"].as_str().unwrap().to_owned();
        if !seen.contains(&id) {
            seen.push(id);
            out.push(e);
        }
    }
    out
}

#[tokio::test]
async fn push_pull_delete_events_are_signed_filtered_and_retried() {
    let recv = Receiver::start().await;
    // `all` refuses its first delivery with a 500: the event must come again.
    recv.fail_first("all", 1);
    let hooks = vec![
        hook(recv.url("all"), "secret-all", &["*"], &EventAction::ALL),
        hook(
            recv.url("team"),
            "secret-team",
            &["team/*"],
            &[EventAction::Push],
        ),
    ];
    let srv = Server::start_with(move |s: &mut Settings| s.webhooks = hooks).await;

    // Push: a manifest under a tag.
    let img = srv.push_image("team/app", "v1", 1).await;
    let got = recv.wait_for("all", 2).await;
    assert_eq!(
        got[0].event()["id"],
        got[1].event()["id"],
        "a retry resends the same event"
    );
    assert_eq!(got[0].body, got[1].body, "a retry resends the same bytes");
    for r in &got {
        assert_signed(r, "secret-all");
    }
    let e = got[1].event();
    assert_eq!(e["action"], "push");
    assert_eq!(e["target"]["repository"], "team/app");
    assert_eq!(e["target"]["digest"], img.digest.as_str());
    assert_eq!(e["target"]["tag"], "v1");
    assert_eq!(e["target"]["mediaType"], OCI_MANIFEST);
    assert_eq!(e["target"]["size"], img.manifest.len());
    assert_eq!(e["request"]["method"], "PUT");
    assert!(
        e["request"]["addr"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"),
        "{e}"
    );
    assert!(!e["request"]["id"].as_str().unwrap().is_empty());
    assert_eq!(e["actor"], serde_json::json!({}), "auth is off: no actor");
    chrono::DateTime::parse_from_rfc3339(e["timestamp"].as_str().unwrap()).unwrap();
    assert!(e["source"]["addr"].as_str().unwrap().contains(':'), "{e}");
    // The team endpoint got it too, signed with its own secret.
    let team = recv.wait_for("team", 1).await;
    assert_signed(&team[0], "secret-team");
    assert_eq!(team[0].event()["target"]["digest"], img.digest.as_str());

    // A repository outside team/*: `all` hears of it, `team` does not.
    let other = srv.push_image("other/app", "latest", 2).await;
    let got = recv.wait_for("all", 3).await;
    let e = got[2].event();
    assert_eq!(e["target"]["repository"], "other/app");
    assert_eq!(e["target"]["digest"], other.digest.as_str());

    // Pull: a GET of a manifest, by tag and by digest. A HEAD is not a pull.
    let r = srv
        .send(
            srv.request(Method::GET, "/v2/team/app/manifests/v1")
                .header("user-agent", "webhook-test/1.0"),
        )
        .await
        .expect(200);
    assert_eq!(r.body.len(), img.manifest.len());
    srv.head("/v2/team/app/manifests/v1").await.expect(200);
    srv.get(&format!("/v2/team/app/manifests/{}", img.digest))
        .await
        .expect(200);
    let got = recv.wait_for("all", 5).await;
    let pulls: Vec<Value> = distinct_events(&got)
        .into_iter()
        .filter(|e| e["action"] == "pull")
        .collect();
    assert_eq!(pulls.len(), 2, "{pulls:?}");
    assert_eq!(pulls[0]["target"]["tag"], "v1");
    assert_eq!(pulls[0]["target"]["digest"], img.digest.as_str());
    assert_eq!(pulls[0]["request"]["method"], "GET");
    assert_eq!(pulls[0]["request"]["useragent"], "webhook-test/1.0");
    assert!(pulls[1]["target"].get("tag").is_none(), "{}", pulls[1]);

    // Deletes: a tag, a manifest by digest, a blob.
    srv.delete("/v2/other/app/manifests/latest")
        .await
        .expect(202);
    srv.delete(&format!("/v2/team/app/manifests/{}", img.digest))
        .await
        .expect(202);
    srv.delete(&format!("/v2/team/app/blobs/{}", img.layer.digest))
        .await
        .expect(202);
    let got = recv.wait_for("all", 8).await;
    for r in &got {
        assert_signed(r, "secret-all");
    }
    let deletes: Vec<Value> = distinct_events(&got)
        .into_iter()
        .filter(|e| e["action"] == "delete")
        .collect();
    assert_eq!(deletes.len(), 3, "{deletes:?}");
    let find = |repo: &str, key: &str, value: &str| {
        deletes
            .iter()
            .find(|e| e["target"]["repository"] == repo && e["target"][key] == value)
            .unwrap_or_else(|| panic!("no delete of {repo} {key}={value} in {deletes:?}"))
    };
    assert_eq!(
        find("other/app", "tag", "latest")["request"]["method"],
        "DELETE"
    );
    find("team/app", "digest", &img.digest);
    find("team/app", "digest", &img.layer.digest);

    // The team endpoint subscribed to pushes only: still one event.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(recv.on("team").len(), 1, "{:?}", recv.on("team"));
}

#[tokio::test]
async fn a_receiver_that_hangs_or_fails_never_slows_requests() {
    let recv = Receiver::start().await;
    recv.fail_first("down", 1000);
    let mut hang = hook(recv.url("hang"), "k", &["*"], &EventAction::ALL);
    hang.timeout_secs = 30;
    let mut down = hook(recv.url("down"), "k", &["*"], &EventAction::ALL);
    down.max_retries = 2;
    down.retry_backoff_ms = 20;
    let srv = Server::start_with(move |s| s.webhooks = vec![hang, down]).await;
    let started = Instant::now();
    let img = srv.push_image("slow/app", "v1", 3).await;
    for _ in 0..5 {
        srv.get(&format!("/v2/slow/app/manifests/{}", img.digest))
            .await
            .expect(200);
    }
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "requests waited for the webhooks: {took:?}"
    );
    // `down` answers 500 every time: one first attempt and two retries for
    // each of the six events, then it is given up.
    recv.wait_for("down", 18).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(recv.on("down").len(), 18, "no more than max_retries");
    assert_eq!(recv.on("hang").len(), 6);
}

#[tokio::test]
async fn the_actor_is_the_user_of_the_token() {
    let recv = Receiver::start().await;
    let hooks = vec![hook(recv.url("auth"), "s", &["team/*"], &EventAction::ALL)];
    let (srv, ()) = Server::start_auth(
        move |s| s.webhooks = hooks,
        async |cat: &wharf_server::catalog::Catalog| {
            wharf_server::admin::add_user(cat, "admin", "Admin-Pw-5ecret!", true)
                .await
                .unwrap();
            wharf_server::admin::add_user(cat, "alice", "Alice-Pw-5ecret!", false)
                .await
                .unwrap();
            wharf_server::admin::grant(cat, "alice", "team/*", "pull,push")
                .await
                .unwrap();
        },
    )
    .await;
    let r = srv
        .send(
            srv.request(
                Method::GET,
                "/token?service=wharf-registry&scope=repository:team/app:pull,push",
            )
            .basic_auth("alice", Some("Alice-Pw-5ecret!")),
        )
        .await
        .expect(200);
    let token = r.json()["token"].as_str().unwrap().to_owned();
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let digest = sha256(config);
    srv.send(
        srv.request_as(
            Some(&token),
            Method::POST,
            &format!("/v2/team/app/blobs/uploads/?digest={digest}"),
        )
        .header("content-type", "application/octet-stream")
        .body(config.to_vec()),
    )
    .await
    .expect(201);
    let manifest = to_bytes(&image_manifest(
        OCI_MANIFEST,
        &Desc::of(OCI_CONFIG, config),
        &[],
    ));
    srv.send(
        srv.request_as(Some(&token), Method::PUT, "/v2/team/app/manifests/v1")
            .header("content-type", OCI_MANIFEST)
            .header("x-request-id", "req-42")
            .body(manifest),
    )
    .await
    .expect(201);
    let got = recv.wait_for("auth", 1).await;
    assert_signed(&got[0], "s");
    let e = got[0].event();
    assert_eq!(e["actor"]["name"], "alice");
    assert_eq!(
        e["request"]["id"], "req-42",
        "the client's request id is kept"
    );
    // A refused request (no token) causes no event.
    srv.send(srv.request(Method::GET, "/v2/team/app/manifests/v1"))
        .await
        .expect(401);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(recv.on("auth").len(), 1);
}

#[tokio::test]
async fn invalid_webhooks_stop_the_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings::with_data_dir(dir.path());
    settings.webhooks = vec![hook(
        "http://127.0.0.1:9/x".into(),
        "",
        &["*"],
        &EventAction::ALL,
    )];
    let err = wharf_server::build_state(&settings)
        .await
        .err()
        .expect("an empty secret is refused")
        .to_string();
    assert!(
        err.contains("webhook #0") && err.contains("secret"),
        "{err}"
    );

    // The same from a config file: unknown action names are refused too.
    let file = dir.path().join("server.toml");
    std::fs::write(
        &file,
        "[[webhooks]]\nurl = \"http://127.0.0.1:9/\"\nsecret = \"k\"\nactions = [\"push\", \"fly\"]\n",
    )
    .unwrap();
    let err = Settings::load(Some(&file), Vec::new(), &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("fly"), "{err}");
    std::fs::write(
        &file,
        "[[webhooks]]\nurl = \"http://127.0.0.1:9/\"\nsecret = \"k\"\nrepositories = [\"team/*\"]\ntimeout_secs = 2\n",
    )
    .unwrap();
    let s = Settings::load(Some(&file), Vec::new(), &[]).unwrap();
    assert_eq!(s.webhooks.len(), 1);
    assert_eq!(s.webhooks[0].actions, EventAction::ALL.to_vec());
    assert_eq!(s.webhooks[0].max_retries, 5);
    assert!(
        !format!("{s:?}").contains("\"k\""),
        "the secret is not in Debug output"
    );
}
