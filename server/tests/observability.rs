//! What an operator sees: `/metrics` (parsed strictly as Prometheus /
//! OpenMetrics text, and moving with the requests made), `/healthz`,
//! `/readyz`, the request id, and TLS with the self-signed CA.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use reqwest::Method;

/// Samples by `name{labels}` (labels as printed). Panics on any line that is
/// not a comment of the format or a well-formed sample.
fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    let mut types = BTreeMap::new();
    let valid_name = |n: &str| {
        !n.is_empty()
            && n.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    assert!(text.ends_with("# EOF\n"), "no # EOF at the end:\n{text}");
    for line in text.lines() {
        if line == "# EOF" {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let kind = parts.next().unwrap();
            let name = parts.next().unwrap_or("");
            assert!(
                matches!(kind, "HELP" | "TYPE" | "UNIT"),
                "bad comment line {line:?}"
            );
            assert!(valid_name(name), "bad metric name in {line:?}");
            if kind == "TYPE" {
                let t = parts.next().unwrap_or("");
                assert!(
                    matches!(
                        t,
                        "counter" | "gauge" | "histogram" | "summary" | "unknown" | "info"
                    ),
                    "bad type in {line:?}"
                );
                types.insert(name.to_owned(), t.to_owned());
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample line {line:?}"));
        let name = series.split('{').next().unwrap();
        assert!(valid_name(name), "bad sample name in {line:?}");
        if let Some(labels) = series.strip_prefix(name)
            && !labels.is_empty()
        {
            assert!(
                labels.starts_with('{') && labels.ends_with('}'),
                "bad labels in {line:?}"
            );
            for pair in labels[1..labels.len() - 1].split(',') {
                let (k, v) = pair
                    .split_once('=')
                    .unwrap_or_else(|| panic!("bad label in {line:?}"));
                assert!(valid_name(k), "bad label name in {line:?}");
                assert!(
                    v.len() >= 2 && v.starts_with('"') && v.ends_with('"'),
                    "unquoted label value in {line:?}"
                );
            }
        }
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        assert!(
            types.keys().any(|t| name.starts_with(t.as_str())),
            "sample {name} has no TYPE line before it"
        );
        samples.insert(series.to_owned(), v);
    }
    samples
}

fn sample(m: &BTreeMap<String, f64>, series: &str) -> f64 {
    m.get(series).copied().unwrap_or(0.0)
}

async fn scrape(srv: &Server) -> BTreeMap<String, f64> {
    let r = srv.get("/metrics").await.expect(200);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/openmetrics-text")),
        "{r}"
    );
    parse_metrics(std::str::from_utf8(&r.body).expect("metrics are UTF-8"))
}

#[tokio::test]
async fn metrics_parse_and_move_with_requests() {
    let srv = Server::start_with(|s| s.metrics.catalog_refresh_secs = 0).await;
    let before = scrape(&srv).await;
    assert_eq!(sample(&before, "wharf_stored_blobs"), 0.0);
    assert_eq!(sample(&before, "wharf_gc_runs_total"), 0.0);

    let image = srv.push_image("team/app", "v1", 1).await;
    let m = srv.get("/v2/team/app/manifests/v1").await.expect(200);
    assert_eq!(m.body.as_ref(), image.manifest.as_slice());
    let blob = srv
        .get(&format!("/v2/team/app/blobs/{}", image.layer.digest))
        .await
        .expect(200);
    srv.get("/v2/team/app/manifests/nope").await.expect(404);
    srv.get("/v2/").await.expect(200);
    // An open upload session shows as in progress.
    let _location = srv.start_upload("team/app").await;

    let after = scrape(&srv).await;
    let req = |route: &str, status: u16| {
        let key = format!("wharf_http_requests_total{{route=\"{route}\",status=\"{status}\"}}");
        sample(&after, &key) - sample(&before, &key)
    };
    assert_eq!(req("manifest", 200), 1.0, "{after:#?}");
    assert_eq!(req("manifest", 201), 1.0, "{after:#?}");
    assert_eq!(req("manifest", 404), 1.0, "{after:#?}");
    assert_eq!(req("blob", 200), 1.0, "{after:#?}");
    assert_eq!(req("base", 200), 1.0, "{after:#?}");
    assert!(req("blob_upload", 201) >= 2.0, "{after:#?}");
    // Raw paths never become labels.
    assert!(!after.keys().any(|k| k.contains("team/app")), "{after:#?}");
    assert_eq!(
        sample(
            &after,
            "wharf_http_request_duration_seconds_count{route=\"manifest\"}"
        ),
        3.0
    );
    assert!(
        sample(
            &after,
            "wharf_http_request_duration_seconds_bucket{le=\"+Inf\",route=\"manifest\"}"
        ) >= 3.0
    );
    assert!(
        sample(
            &after,
            "wharf_http_response_body_bytes_total{route=\"blob\"}"
        ) >= blob.body.len() as f64
    );
    assert!(
        sample(
            &after,
            "wharf_http_response_body_bytes_total{route=\"manifest\"}"
        ) >= image.manifest.len() as f64
    );
    let uploaded = (image.layer.size + image.config.size) as f64;
    assert!(
        sample(
            &after,
            "wharf_http_request_body_bytes_total{route=\"blob_upload\"}"
        ) >= uploaded,
        "{after:#?}"
    );
    assert_eq!(sample(&after, "wharf_stored_blobs"), 2.0);
    assert_eq!(sample(&after, "wharf_stored_bytes"), uploaded);
    assert_eq!(sample(&after, "wharf_uploads_in_progress"), 1.0);
}

#[tokio::test]
async fn gc_api_shows_in_the_metrics() {
    // The call garbage collection makes after a run.
    let m = wharf_server::metrics::Metrics::new(Duration::ZERO);
    m.gc_run(4096);
    m.gc_run(0);
    m.gc_failed();
    let text = m.encode();
    let parsed = parse_metrics(&text);
    assert_eq!(sample(&parsed, "wharf_gc_runs_total"), 2.0);
    assert_eq!(sample(&parsed, "wharf_gc_failures_total"), 1.0);
    assert_eq!(sample(&parsed, "wharf_gc_freed_bytes_total"), 4096.0);
}

#[tokio::test]
async fn health_and_readiness() {
    let srv = Server::start().await;
    let h = srv.get("/healthz").await.expect(200);
    assert_eq!(h.body.as_ref(), b"ok\n");
    let r = srv.get("/readyz").await.expect(200);
    assert_eq!(r.body.as_ref(), b"ready\n");
    // The store stops answering: its root is no longer a directory.
    let root = srv.data_dir().join("blobs");
    std::fs::remove_dir_all(&root).unwrap();
    std::fs::write(&root, b"not a directory").unwrap();
    let r = srv.get("/readyz").await.expect(503);
    let body = String::from_utf8_lossy(&r.body).into_owned();
    assert!(body.starts_with("not ready: store:"), "{body}");
    // Still alive.
    srv.get("/healthz").await.expect(200);
}

#[tokio::test]
async fn request_ids_are_kept_or_made() {
    let srv = Server::start().await;
    let r = srv
        .send(
            srv.request(Method::GET, "/v2/")
                .header("x-request-id", "client-id-42"),
        )
        .await
        .expect(200);
    assert_eq!(r.header("x-request-id"), Some("client-id-42"));
    let r = srv
        .send(
            srv.request(Method::GET, "/v2/")
                .header("x-request-id", "has space"),
        )
        .await
        .expect(200);
    let made = r.must_header("x-request-id");
    assert_ne!(made, "has space");
    assert_eq!(made.len(), 20);
    let a = srv.get("/v2/x/manifests/latest").await;
    let b = srv.get("/v2/x/manifests/latest").await;
    assert_ne!(a.must_header("x-request-id"), b.must_header("x-request-id"));
    // Errors carry one too.
    assert_eq!(a.status.as_u16(), 404);
}

#[tokio::test]
async fn tls_with_the_self_signed_ca() {
    install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = wharf_server::Settings::with_data_dir(dir.path());
    settings.storage.fsync = false;
    settings.tls.self_signed = true;
    settings.tls.san = vec!["registry.test".into()];
    let tls = wharf_server::tls::server_config(&settings)
        .expect("TLS config")
        .expect("TLS is on");
    let config = tls.config;
    let made = tls.self_signed.expect("self-signed files");
    assert!(made.names.iter().any(|n| n == "registry.test"));
    let state = wharf_server::build_state(&settings).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(wharf_server::serve_on_with(
        listener,
        wharf_server::app(state),
        Some(Arc::clone(&config)),
        std::future::pending(),
    ));

    let ca = reqwest::Certificate::from_pem(&std::fs::read(&made.ca_cert).unwrap()).unwrap();
    let trusting = reqwest::Client::builder()
        .tls_backend_rustls()
        .tls_certs_only([ca])
        .no_proxy()
        // registry.test -> the server, as /etc/hosts would.
        .resolve(
            "registry.test",
            std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        )
        .build()
        .unwrap();
    for host in ["localhost", "127.0.0.1", "registry.test"] {
        let r = trusting
            .get(format!("https://{host}:{port}/v2/"))
            .header("x-request-id", "tls-1")
            .send()
            .await
            .unwrap_or_else(|e| panic!("TLS to {host}: {e:?}"));
        assert_eq!(r.status().as_u16(), 200, "{host}");
        assert_eq!(
            r.headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok()),
            Some("tls-1")
        );
        assert_eq!(
            r.headers()
                .get("docker-distribution-api-version")
                .and_then(|v| v.to_str().ok()),
            Some("registry/2.0")
        );
    }
    // A push and pull of a blob over TLS.
    let data = pattern(300_000, 9);
    let digest = sha256(&data);
    let r = trusting
        .post(format!(
            "https://localhost:{port}/v2/t/blobs/uploads/?digest={digest}"
        ))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let r = trusting
        .get(format!("https://localhost:{port}/v2/t/blobs/{digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), data.as_slice());

    // Without the CA, the handshake fails on the certificate.
    let plain = reqwest::Client::builder()
        .tls_backend_rustls()
        .tls_certs_only([])
        .no_proxy()
        .build()
        .unwrap();
    let err = plain
        .get(format!("https://localhost:{port}/v2/"))
        .send()
        .await
        .expect_err("an unknown CA must be refused");
    let chain = format!("{err:?}");
    assert!(
        chain.contains("UnknownIssuer") || chain.contains("certificate"),
        "{chain}"
    );
    // Plain HTTP to the TLS port gets no registry answer.
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let r = http
        .get(format!("http://127.0.0.1:{port}/v2/"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(r.is_err() || !r.unwrap().status().is_success());
    task.abort();
}

#[tokio::test]
async fn bad_tls_settings_are_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = wharf_server::Settings::with_data_dir(dir.path());
    settings.tls.cert = Some(dir.path().join("missing.crt"));
    settings.tls.key = Some(dir.path().join("missing.key"));
    let err = wharf_server::tls::server_config(&settings)
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("cannot read TLS certificate") && err.contains("missing.crt"),
        "{err}"
    );
    assert!(!err.contains('\n'));
    settings.tls.key = None;
    let err = wharf_server::tls::server_config(&settings)
        .unwrap_err()
        .to_string();
    assert!(err.contains("needs both cert and key"), "{err}");
}
