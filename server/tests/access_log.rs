//! The JSON log as `--log-format json` writes it: one access line per
//! `/v2/` request with its request id and user, and never a token or a
//! password. A test binary of its own: tracing caches per-callsite interest
//! globally, so a thread-local subscriber is only reliable when no other
//! test logs at the same time.

mod common;

use std::sync::Arc;

use common::*;
use reqwest::Method;

/// Log output captured from the test's thread (the runtime of
/// `#[tokio::test]` runs the server's tasks there too).
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

#[tokio::test]
async fn json_access_lines_name_the_user_and_never_the_token() {
    const PW: &str = "alice-Pw-5ecret!";
    let logs = Captured::default();
    // The format main.rs sets up for --log-format json.
    let subscriber = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_span_list(false)
        .with_env_filter("info")
        .with_writer(logs.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let (srv, ()) = Server::start_auth(
        |_| {},
        async |cat: &wharf_server::catalog::Catalog| {
            wharf_server::admin::add_user(cat, "admin", "admin-Pw-5ecret!", true)
                .await
                .unwrap();
            wharf_server::admin::add_user(cat, "alice", PW, false)
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
                "/token?service=wharf-registry&scope=repository:team/app:pull",
            )
            .basic_auth("alice", Some(PW)),
        )
        .await
        .expect(200);
    let token = r.json()["token"].as_str().unwrap().to_owned();
    srv.send(
        srv.request_as(Some(&token), Method::GET, "/v2/team/app/manifests/v1")
            .header("x-request-id", "json-1"),
    )
    .await
    .expect(404);
    srv.send(
        srv.request(Method::GET, "/v2/team/app/tags/list")
            .header("x-request-id", "json-2"),
    )
    .await
    .expect(401);

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let access: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["target"] == "wharf::access")
        .collect();
    let by_id = |id: &str| {
        let found: Vec<_> = access.iter().filter(|r| r["request_id"] == id).collect();
        assert_eq!(found.len(), 1, "{id}: {text}");
        (*found[0]).clone()
    };
    let a = by_id("json-1");
    assert_eq!(a["user"], "alice", "{a}");
    assert_eq!(a["status"], 404);
    assert_eq!(a["route"], "manifest");
    assert_eq!(a["path"], "/v2/team/app/manifests/v1");
    assert_eq!(a["method"], "GET");
    assert!(
        a["remote"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{a}"
    );
    assert!(a["ms"].is_number() && a["bytes_out"].is_number() && a["bytes_in"] == 0);
    let b = by_id("json-2");
    assert_eq!(b["user"], "-");
    assert_eq!(b["status"], 401);
    // The token endpoint is not a /v2/ route: no access line.
    assert!(!access.iter().any(|r| r["route"] == "token"), "{text}");
    assert!(!text.contains(&token), "a token reached the log");
    assert!(!text.contains(PW), "a password reached the log");
}
