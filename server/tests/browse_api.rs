//! The web catalog's JSON API (`/api/v1/`), over real HTTP against a wharf
//! server started in-process (see `common`), on SQLite or, when
//! `WHARF_TEST_POSTGRES_URL` is set (scripts/test), on PostgreSQL: every
//! endpoint, paging, search (with SQL and HTML metacharacters), sorting, a
//! multi-arch index's platforms, referrers by artifactType, stats, image
//! configs too large or broken to show, the
//! permission cases (anonymous, a `team/*` grant, delete rights, Bearer and
//! Basic), the OpenAPI document, and a catalog made by an older wharf (no
//! browse columns) browsing correctly after an upgrade.

mod common;

use common::*;
use reqwest::Method;
use serde_json::{Value, json};
use wharf_server::admin;
use wharf_server::catalog::Catalog;

const SERVICE: &str = "wharf-registry";
const ADMIN_PW: &str = "Adm1n-Very-Secret-Pw";

// ---- pushing (with or without a token) ----------------------------------------------

async fn push_blob(srv: &Server, token: Option<&str>, repo: &str, data: &[u8]) -> Desc {
    let digest = sha256(data);
    let rb = srv
        .request_as(
            token,
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
        )
        .header("content-type", "application/octet-stream")
        .body(data.to_vec());
    srv.send(rb).await.expect(201);
    Desc::of(OCI_LAYER, data)
}

async fn push_manifest(
    srv: &Server,
    token: Option<&str>,
    repo: &str,
    reference: &str,
    media_type: &str,
    body: &[u8],
) -> String {
    let rb = srv
        .request_as(
            token,
            Method::PUT,
            &format!("/v2/{repo}/manifests/{reference}"),
        )
        .header("content-type", media_type)
        .body(body.to_vec());
    let r = srv.send(rb).await.expect(201);
    r.must_header("docker-content-digest").to_owned()
}

/// An image pushed by [`push_image`].
#[derive(Clone, Debug)]
struct Pushed {
    digest: String,
    manifest: Vec<u8>,
    config: Desc,
    layers: Vec<Desc>,
}

impl Pushed {
    fn total_size(&self) -> u64 {
        (self.config.size + self.layers.iter().map(|l| l.size).sum::<usize>()) as u64
    }
}

fn config_json(arch: &str, variant: Option<&str>, seed: u8) -> Value {
    let mut c = json!({
        "created": "2026-11-28T01:02:03Z",
        "architecture": arch,
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/bin:/usr/bin", format!("SEED={seed}")],
            "Entrypoint": ["/entry.sh"],
            "Cmd": ["serve", "--port", "80"],
            "WorkingDir": "/app",
            "User": "app",
            "ExposedPorts": { "80/tcp": {}, "443/tcp": {} },
            "Labels": { "org.opencontainers.image.title": "<b>demo</b>" }
        },
        "history": [
            { "created": "2026-11-28T01:00:00Z", "created_by": "/bin/sh -c #(nop) ADD file:abc in / " },
            { "created_by": "/bin/sh -c #(nop)  ENV SEED=1", "empty_layer": true },
            { "created_by": "RUN make install # buildkit", "comment": "buildkit.dockerfile.v0" }
        ],
        "rootfs": { "type": "layers", "diff_ids": [] }
    });
    if let Some(v) = variant {
        c["variant"] = json!(v);
    }
    c
}

/// Pushes an OCI image (config with Env, Cmd, ports, labels, history; two
/// layers) under `tag`.
async fn push_image(
    srv: &Server,
    token: Option<&str>,
    repo: &str,
    tag: &str,
    arch: &str,
    variant: Option<&str>,
    seed: u8,
) -> Pushed {
    let config_bytes = to_bytes(&config_json(arch, variant, seed));
    push_blob(srv, token, repo, &config_bytes).await;
    let config = Desc::of(OCI_CONFIG, &config_bytes);
    let mut layers = Vec::new();
    for i in 0..2u8 {
        let data = pattern(500 + 100 * i as usize + seed as usize, seed.wrapping_add(i));
        push_blob(srv, token, repo, &data).await;
        layers.push(Desc::of(OCI_LAYER, &data));
    }
    let manifest = to_bytes(&image_manifest(OCI_MANIFEST, &config, &layers));
    let digest = push_manifest(srv, token, repo, tag, OCI_MANIFEST, &manifest).await;
    Pushed {
        digest,
        manifest,
        config,
        layers,
    }
}

/// Pushes a two-platform index (linux/amd64 and linux/arm64/v8, plus an
/// attestation entry of unknown platform) under `tag`.
async fn push_index(
    srv: &Server,
    token: Option<&str>,
    repo: &str,
    tag: &str,
) -> (String, Vec<Pushed>) {
    let amd = push_image(srv, token, repo, "amd64-only", "amd64", None, 40).await;
    let arm = push_image(srv, token, repo, "arm64-only", "arm64", Some("v8"), 41).await;
    let index = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            { "mediaType": OCI_MANIFEST, "digest": amd.digest, "size": amd.manifest.len(),
              "platform": { "os": "linux", "architecture": "amd64" } },
            { "mediaType": OCI_MANIFEST, "digest": arm.digest, "size": arm.manifest.len(),
              "platform": { "os": "linux", "architecture": "arm64", "variant": "v8" } },
        ],
        "annotations": { "org.opencontainers.image.version": "1.2.3" }
    });
    let digest = push_manifest(srv, token, repo, tag, OCI_INDEX, &to_bytes(&index)).await;
    (digest, vec![amd, arm])
}

// ---- reading ----------------------------------------------------------------------

async fn api(srv: &Server, path: &str) -> Resp {
    srv.send(srv.request(Method::GET, path)).await
}

async fn api_ok(srv: &Server, path: &str) -> Value {
    let r = api(srv, path).await.expect(200);
    assert_eq!(
        r.header("content-type"),
        Some("application/json"),
        "{path}: {r}"
    );
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    r.json()
}

fn names(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items in {page}"))
        .iter()
        .map(|i| i["name"].as_str().expect("a name").to_owned())
        .collect()
}

/// Every item of a listing, a page of `limit` at a time by `next_offset`;
/// checks that each page's `total` agrees.
async fn all_pages(srv: &Server, path: &str, limit: u32) -> (u64, Vec<String>) {
    let sep = if path.contains('?') { '&' } else { '?' };
    let mut offset = 0u64;
    let mut out = Vec::new();
    let mut total = None;
    loop {
        let page = api_ok(srv, &format!("{path}{sep}limit={limit}&offset={offset}")).await;
        let t = page["total"].as_u64().expect("total");
        assert_eq!(
            *total.get_or_insert(t),
            t,
            "total changed while paging {path}"
        );
        assert!(names(&page).len() <= limit as usize);
        out.extend(names(&page));
        match page["next_offset"].as_u64() {
            Some(next) => {
                assert_eq!(next, offset + limit as u64, "{path}: {page}");
                offset = next;
            }
            None => break,
        }
    }
    (total.unwrap_or(0), out)
}

// ---- the tests ----------------------------------------------------------------------

#[tokio::test]
async fn openapi_document_lists_every_route() {
    let srv = Server::start().await;
    let doc = api_ok(&srv, "/api/v1/openapi.json").await;
    assert!(
        doc["openapi"].as_str().unwrap_or("").starts_with("3."),
        "{doc}"
    );
    let paths = doc["paths"].as_object().expect("paths");
    for (path, method) in [
        ("/api/v1/stats", "get"),
        ("/api/v1/repositories", "get"),
        ("/api/v1/repositories/{name}", "get"),
        ("/api/v1/repositories/{name}/tags", "get"),
        ("/api/v1/repositories/{name}/tags/{tag}", "delete"),
        ("/api/v1/repositories/{name}/manifests/{reference}", "get"),
        (
            "/api/v1/repositories/{name}/manifests/{digest}/referrers",
            "get",
        ),
        // The fleet (issue #7).
        ("/api/v1/nodes/join", "post"),
        ("/api/v1/nodes/tokens", "post"),
        ("/api/v1/nodes", "get"),
        ("/api/v1/nodes/{name}", "get"),
        ("/api/v1/nodes/{name}", "delete"),
        ("/api/v1/node/channel", "get"),
        ("/api/v1/node/heartbeat", "post"),
        ("/api/v1/node/report", "post"),
        ("/api/v1/node/logs/{request}", "post"),
        ("/api/v1/deployments", "get"),
        ("/api/v1/deployments", "post"),
        ("/api/v1/deployments/{name}", "get"),
        ("/api/v1/deployments/{name}", "delete"),
        ("/api/v1/deployments/{name}/logs", "get"),
    ] {
        assert!(
            paths.get(path).and_then(|p| p.get(method)).is_some(),
            "{method} {path} is not in the OpenAPI document: {:?}",
            paths.keys().collect::<Vec<_>>()
        );
    }
    assert_eq!(
        paths.len(),
        7 + 11,
        "a route without a test here: {:?}",
        paths.keys()
    );
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    for s in [
        "RepoSummary",
        "TagSummary",
        "ManifestView",
        "ImageConfigView",
        "ReferrerView",
        "Stats",
        "DeploymentSpec",
        "DeploymentInfo",
        "NodeInfo",
        "ServerMessage",
    ] {
        assert!(
            schemas.contains_key(s),
            "schema {s} missing: {:?}",
            schemas.keys()
        );
    }
    let params = doc["paths"]["/api/v1/repositories"]["get"]["parameters"].to_string();
    for p in ["\"q\"", "\"sort\"", "\"limit\"", "\"offset\""] {
        assert!(params.contains(p), "parameter {p} missing: {params}");
    }
    // Unknown endpoints under /api/v1 are JSON 404s, not the UI's pages.
    let r = api(&srv, "/api/v1/nope").await;
    r.expect_error(404, "UNSUPPORTED");
    let r = srv
        .send(srv.request(Method::POST, "/api/v1/repositories"))
        .await;
    r.expect_error(405, "UNSUPPORTED");
}

#[tokio::test]
async fn repositories_search_sort_and_page() {
    let srv = Server::start().await;
    let repos = [
        "alpha/app",
        "beta/db",
        "gamma",
        "team/a_b",
        "team/api",
        "team/web",
        "zeta/deep/nested/app",
    ];
    for (i, r) in repos.iter().enumerate() {
        push_image(&srv, None, r, "latest", "amd64", None, i as u8).await;
        if i % 2 == 0 {
            push_image(&srv, None, r, "v1", "amd64", None, 100 + i as u8).await;
        }
        // Distinct push times, for the `pushed` order.
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    let page = api_ok(&srv, "/api/v1/repositories").await;
    assert_eq!(names(&page), repos, "sorted by name");
    assert_eq!(page["total"], 7);
    assert_eq!(page["limit"], 25);
    assert!(page["next_offset"].is_null());
    let first = &page["items"][0];
    assert_eq!(first["tag_count"], 2, "{first}");
    assert!(first["pushed_at"].as_i64().unwrap() > 1_700_000_000_000);

    // Pages of 2, to the last one.
    let (total, paged) = all_pages(&srv, "/api/v1/repositories", 2).await;
    assert_eq!(
        (total, paged.as_slice()),
        (7, repos.map(String::from).as_slice())
    );
    let last = api_ok(&srv, "/api/v1/repositories?limit=2&offset=6").await;
    assert_eq!(names(&last), ["zeta/deep/nested/app"]);
    assert!(last["next_offset"].is_null());
    let past = api_ok(&srv, "/api/v1/repositories?limit=2&offset=100").await;
    assert_eq!((past["total"].as_u64(), names(&past).len()), (Some(7), 0));

    // Most recently pushed first.
    let pushed = api_ok(&srv, "/api/v1/repositories?sort=pushed").await;
    let mut want: Vec<&str> = repos.to_vec();
    want.reverse();
    assert_eq!(names(&pushed), want);

    // Search: a substring, case-insensitive; LIKE's metacharacters are
    // literal ('_' matches only '_').
    let found = api_ok(&srv, "/api/v1/repositories?q=APP").await;
    assert_eq!(names(&found), ["alpha/app", "zeta/deep/nested/app"]);
    let found = api_ok(&srv, "/api/v1/repositories?q=a_").await;
    assert_eq!(names(&found), ["team/a_b"]);
    let found = api_ok(&srv, "/api/v1/repositories?q=team/&sort=pushed&limit=2").await;
    assert_eq!(names(&found), ["team/web", "team/api"]);
    assert_eq!(found["total"], 3);
    assert_eq!(found["next_offset"], 2);

    // SQL and HTML in the search change nothing, match only what holds
    // them literally, and come back only as JSON.
    for evil in [
        "%",
        "_",
        "\\",
        "%25",
        "' OR '1'='1",
        "'; DROP TABLE repositories; --",
        "\" OR 1=1 --",
        "<script>alert(1)</script>",
        "a%' UNION SELECT name FROM users --",
    ] {
        let q = serde_urlencoded::to_string([("q", evil)]).unwrap();
        let r = api(&srv, &format!("/api/v1/repositories?{q}"))
            .await
            .expect(200);
        let page = r.json();
        // Only names holding the text literally (`_` is in team/a_b).
        let literal: Vec<&str> = repos.iter().copied().filter(|n| n.contains(evil)).collect();
        assert_eq!(names(&page), literal, "{evil:?}: {page}");
        assert!(
            !String::from_utf8_lossy(&r.body).contains("<script>"),
            "raw HTML in the answer"
        );
    }
    assert_eq!(names(&api_ok(&srv, "/api/v1/repositories").await), repos);

    // Bad query values are 400 with the JSON error body.
    for bad in [
        "limit=0",
        "limit=101",
        "limit=abc",
        "limit=-1",
        "offset=-1",
        "offset=99999999999",
        "sort=size",
        "q=%00",
    ] {
        let r = api(&srv, &format!("/api/v1/repositories?{bad}")).await;
        let e = r.expect_error(400, "INVALID_PARAMETER");
        assert!(!e["message"].as_str().unwrap_or("").is_empty(), "{bad}");
    }
    let long = "x".repeat(257);
    api(&srv, &format!("/api/v1/repositories?q={long}"))
        .await
        .expect_error(400, "INVALID_PARAMETER");
    let huge = "x".repeat(5000);
    api(&srv, &format!("/api/v1/repositories?q={huge}"))
        .await
        .expect_error(400, "INVALID_PARAMETER");
}

#[tokio::test]
async fn tags_and_manifests() {
    let srv = Server::start().await;
    let repo = "team/app";
    let v1 = push_image(&srv, None, repo, "v1", "amd64", None, 1).await;
    tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    let v2 = push_image(&srv, None, repo, "V2", "arm64", Some("v8"), 2).await;
    tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    // A second tag on v1's manifest.
    push_manifest(&srv, None, repo, "stable", OCI_MANIFEST, &v1.manifest).await;

    let summary = api_ok(&srv, "/api/v1/repositories/team/app").await;
    assert_eq!(summary["name"], repo);
    assert_eq!(summary["tag_count"], 3);

    let tags = api_ok(&srv, "/api/v1/repositories/team/app/tags").await;
    assert_eq!(
        names(&tags),
        ["stable", "v1", "V2"],
        "case-insensitive order"
    );
    let t = &tags["items"][1];
    assert_eq!(t["digest"], v1.digest.as_str());
    assert_eq!(t["media_type"], OCI_MANIFEST);
    assert_eq!(t["size"], v1.total_size(), "config + layers: {t}");
    assert_eq!(t["platforms"], json!(["linux/amd64"]));
    assert!(t["pushed_at"].as_i64().unwrap() > 0);
    assert_eq!(tags["items"][2]["platforms"], json!(["linux/arm64/v8"]));
    let pushed = api_ok(&srv, "/api/v1/repositories/team/app/tags?sort=pushed").await;
    assert_eq!(names(&pushed), ["stable", "V2", "v1"]);
    let found = api_ok(&srv, "/api/v1/repositories/team/app/tags?q=v").await;
    assert_eq!(names(&found), ["v1", "V2"]);
    let (total, paged) = all_pages(&srv, "/api/v1/repositories/team/app/tags", 1).await;
    assert_eq!(
        (total, paged),
        (3, vec!["stable".into(), "v1".into(), "V2".into()])
    );
    api(&srv, "/api/v1/repositories/team/app/tags?limit=1000")
        .await
        .expect_error(400, "INVALID_PARAMETER");

    // A manifest by tag and by digest: the layers are the pushed ones.
    for reference in ["v1", v1.digest.as_str()] {
        let m = api_ok(
            &srv,
            &format!("/api/v1/repositories/team/app/manifests/{reference}"),
        )
        .await;
        assert_eq!(m["digest"], v1.digest.as_str());
        assert_eq!(m["repository"], repo);
        assert_eq!(m["media_type"], OCI_MANIFEST);
        assert_eq!(m["manifest_size"], v1.manifest.len());
        assert_eq!(m["size"], v1.total_size());
        assert_eq!(m["tags"], json!(["stable", "v1"]));
        assert_eq!(m["platform"], "linux/amd64");
        assert_eq!(m["config_blob"]["digest"], v1.config.digest.as_str());
        let layers = m["layers"].as_array().unwrap();
        assert_eq!(layers.len(), 2);
        for (got, want) in layers.iter().zip(&v1.layers) {
            assert_eq!(got["digest"], want.digest.as_str());
            assert_eq!(got["size"], want.size);
            assert_eq!(got["media_type"], OCI_LAYER);
        }
        let c = &m["config"];
        assert_eq!(c["os"], "linux");
        assert_eq!(c["architecture"], "amd64");
        assert_eq!(c["created"], "2026-11-28T01:02:03Z");
        assert_eq!(c["env"], json!(["PATH=/usr/local/bin:/usr/bin", "SEED=1"]));
        assert_eq!(c["entrypoint"], json!(["/entry.sh"]));
        assert_eq!(c["cmd"], json!(["serve", "--port", "80"]));
        assert_eq!(c["working_dir"], "/app");
        assert_eq!(c["user"], "app");
        assert_eq!(c["exposed_ports"], json!(["443/tcp", "80/tcp"]));
        assert_eq!(c["labels"]["org.opencontainers.image.title"], "<b>demo</b>");
        let h = c["history"].as_array().unwrap();
        assert_eq!(h.len(), 3);
        assert_eq!(h[1]["empty_layer"], true);
        assert_eq!(h[2]["created_by"], "RUN make install # buildkit");
        assert!(m["config_error"].is_null());
        assert_eq!(m["platforms"], json!([]));
    }
    let m = api_ok(&srv, "/api/v1/repositories/team/app/manifests/V2").await;
    assert_eq!(m["platform"], "linux/arm64/v8");
    assert_eq!(m["config"]["variant"], "v8");
    assert_eq!(m["digest"], v2.digest.as_str());

    // Unknown repository, tag, digest, malformed references: 404.
    for path in [
        "/api/v1/repositories/team/nope",
        "/api/v1/repositories/team/nope/tags",
        "/api/v1/repositories/Bad..Name/tags",
        "/api/v1/repositories/team/nope/manifests/v1",
    ] {
        api(&srv, path).await.expect_error(404, "NAME_UNKNOWN");
    }
    let zero = format!("sha256:{}", "0".repeat(64));
    for reference in ["v9", zero.as_str(), "sha256:xyz", "bad%20tag", "-x"] {
        api(
            &srv,
            &format!("/api/v1/repositories/team/app/manifests/{reference}"),
        )
        .await
        .expect_error(404, "MANIFEST_UNKNOWN");
    }
}

#[tokio::test]
async fn an_index_shows_its_platforms() {
    let srv = Server::start().await;
    let (digest, children) = push_index(&srv, None, "multi/arch", "latest").await;
    let tags = api_ok(&srv, "/api/v1/repositories/multi/arch/tags").await;
    assert_eq!(names(&tags), ["amd64-only", "arm64-only", "latest"]);
    let latest = &tags["items"][2];
    assert_eq!(latest["media_type"], OCI_INDEX);
    assert_eq!(
        latest["platforms"],
        json!(["linux/amd64", "linux/arm64/v8"])
    );
    let sum: u64 = children.iter().map(Pushed::total_size).sum();
    assert_eq!(latest["size"], sum, "an index's size is its children's");

    let m = api_ok(&srv, "/api/v1/repositories/multi/arch/manifests/latest").await;
    assert_eq!(m["digest"], digest.as_str());
    assert_eq!(m["size"], sum);
    assert!(m["config"].is_null() && m["platform"].is_null());
    assert_eq!(m["layers"], json!([]));
    assert_eq!(
        m["annotations"]["org.opencontainers.image.version"],
        "1.2.3"
    );
    let p = m["platforms"].as_array().unwrap();
    assert_eq!(p.len(), 2);
    assert_eq!(p[0]["platform"], "linux/amd64");
    assert_eq!(p[0]["digest"], children[0].digest.as_str());
    assert_eq!(p[0]["size"], children[0].manifest.len());
    assert_eq!(p[1]["platform"], "linux/arm64/v8");
}

#[tokio::test]
async fn referrers_by_artifact_type() {
    let srv = Server::start().await;
    let repo = "signed/app";
    let subject = push_image(&srv, None, repo, "v1", "amd64", None, 7).await;
    let empty = b"{}";
    push_blob(&srv, None, repo, empty).await;
    let mut pushed = Vec::new();
    for (kind, seed) in [
        ("application/vnd.dev.cosign.artifact.sig.v1+json", 1u8),
        ("application/spdx+json", 2),
        ("application/spdx+json", 3),
    ] {
        let payload = pattern(50 + seed as usize, seed);
        let layer = push_blob(&srv, None, repo, &payload).await;
        let body = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": kind,
            "config": { "mediaType": OCI_EMPTY, "digest": sha256(empty), "size": 2 },
            "layers": [layer.json()],
            "subject": { "mediaType": OCI_MANIFEST, "digest": subject.digest, "size": subject.manifest.len() },
            "annotations": { "org.opencontainers.image.created": format!("2026-11-28T00:00:0{seed}Z") }
        });
        let d = sha256(&to_bytes(&body));
        push_manifest(&srv, None, repo, &d, OCI_MANIFEST, &to_bytes(&body)).await;
        pushed.push((kind, d));
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    let base = format!(
        "/api/v1/repositories/{repo}/manifests/{}/referrers",
        subject.digest
    );
    let all = api_ok(&srv, &base).await;
    let all = all.as_array().expect("a list");
    assert_eq!(all.len(), 3);
    assert_eq!(all[0]["digest"], pushed[2].1.as_str(), "newest first");
    assert!(all.iter().all(|r| r["created_at"].as_i64().unwrap() > 0));
    assert_eq!(
        all[2]["annotations"]["org.opencontainers.image.created"],
        "2026-11-28T00:00:01Z"
    );
    let sboms = api_ok(
        &srv,
        &format!("{base}?artifactType=application/spdx%2Bjson"),
    )
    .await;
    let sboms = sboms.as_array().unwrap();
    assert_eq!(sboms.len(), 2);
    assert!(
        sboms
            .iter()
            .all(|r| r["artifact_type"] == "application/spdx+json")
    );
    let sigs = api_ok(
        &srv,
        &format!("{base}?artifactType=application/vnd.dev.cosign.artifact.sig.v1%2Bjson"),
    )
    .await;
    assert_eq!(sigs.as_array().unwrap().len(), 1);
    assert_eq!(sigs[0]["digest"], pushed[0].1.as_str());
    let none = api_ok(&srv, &format!("{base}?artifactType=text/plain")).await;
    assert_eq!(none, json!([]));
    // A referrer shows its subject.
    let sig = api_ok(
        &srv,
        &format!("/api/v1/repositories/{repo}/manifests/{}", pushed[0].1),
    )
    .await;
    assert_eq!(sig["subject"], subject.digest.as_str());
    assert_eq!(
        sig["artifact_type"],
        "application/vnd.dev.cosign.artifact.sig.v1+json"
    );
    assert!(
        sig["config"].is_null(),
        "an empty config is not an image config"
    );
    // Unknown subject: 404; a bad filter: 400.
    let zero = format!("sha256:{}", "0".repeat(64));
    api(
        &srv,
        &format!("/api/v1/repositories/{repo}/manifests/{zero}/referrers"),
    )
    .await
    .expect_error(404, "MANIFEST_UNKNOWN");
    api(
        &srv,
        &format!("/api/v1/repositories/{repo}/manifests/v1/referrers"),
    )
    .await
    .expect_error(404, "MANIFEST_UNKNOWN");
    let long = "a".repeat(300);
    api(&srv, &format!("{base}?artifactType={long}"))
        .await
        .expect_error(400, "INVALID_PARAMETER");
}

#[tokio::test]
async fn stats_count_the_catalog() {
    let srv = Server::start().await;
    let empty = api_ok(&srv, "/api/v1/stats").await;
    assert_eq!(
        empty,
        json!({"repositories": 0, "tags": 0, "manifests": 0, "blobs": 0, "bytes_stored": 0})
    );
    let a = push_image(&srv, None, "a/one", "v1", "amd64", None, 1).await;
    push_manifest(&srv, None, "a/one", "v1-again", OCI_MANIFEST, &a.manifest).await;
    let b = push_image(&srv, None, "b/two", "v1", "amd64", None, 2).await;
    let s = api_ok(&srv, "/api/v1/stats").await;
    assert_eq!(s["repositories"], 2);
    assert_eq!(s["tags"], 3);
    assert_eq!(s["manifests"], 2);
    assert_eq!(s["blobs"], 6);
    assert_eq!(s["bytes_stored"], a.total_size() + b.total_size());
}

/// Deleting a tag with auth off: the tag goes, the manifest stays, the
/// counts follow.
#[tokio::test]
async fn delete_a_tag() {
    let srv = Server::start().await;
    let img = push_image(&srv, None, "team/app", "v1", "amd64", None, 1).await;
    push_manifest(&srv, None, "team/app", "v2", OCI_MANIFEST, &img.manifest).await;
    let del = |path: &'static str| srv.send(srv.request(Method::DELETE, path));
    del("/api/v1/repositories/team/app/tags/v1")
        .await
        .expect(204);
    del("/api/v1/repositories/team/app/tags/v1")
        .await
        .expect_error(404, "MANIFEST_UNKNOWN");
    del("/api/v1/repositories/team/nope/tags/v1")
        .await
        .expect_error(404, "NAME_UNKNOWN");
    let tags = api_ok(&srv, "/api/v1/repositories/team/app/tags").await;
    assert_eq!(names(&tags), ["v2"]);
    assert_eq!(
        api_ok(&srv, "/api/v1/repositories/team/app").await["tag_count"],
        1
    );
    api_ok(
        &srv,
        &format!("/api/v1/repositories/team/app/manifests/{}", img.digest),
    )
    .await;
    // GET on a tag path is not a route.
    api(&srv, "/api/v1/repositories/team/app/tags/v2")
        .await
        .expect_error(405, "UNSUPPORTED");
    // Deleting the manifest through /v2 takes its tags along: counts follow.
    srv.delete(&format!("/v2/team/app/manifests/{}", img.digest))
        .await
        .expect(202);
    assert_eq!(
        api_ok(&srv, "/api/v1/repositories/team/app").await["tag_count"],
        0
    );
    let s = api_ok(&srv, "/api/v1/stats").await;
    assert_eq!(
        (s["tags"].as_u64(), s["manifests"].as_u64()),
        (Some(0), Some(0))
    );

    let off = Server::start_with(|s| s.registry.delete_enabled = false).await;
    push_image(&off, None, "x", "v1", "amd64", None, 1).await;
    off.send(off.request(Method::DELETE, "/api/v1/repositories/x/tags/v1"))
        .await
        .expect_error(405, "UNSUPPORTED");
}

/// The image config is read bounded: a config over 4 MiB, or one that is
/// not JSON, leaves the rest of the view intact with a clear reason.
#[tokio::test]
async fn configs_too_large_or_broken_are_explained() {
    let srv = Server::start().await;
    let layer = push_blob(&srv, None, "odd/app", &pattern(100, 1)).await;
    let mut big = config_json("amd64", None, 1);
    big["config"]["Labels"]["padding"] = json!("x".repeat(4 * 1024 * 1024));
    let cases = [
        ("big", to_bytes(&big), "more than"),
        ("broken", b"this is not JSON".to_vec(), "not valid JSON"),
    ];
    for (tag, config_bytes, reason) in cases {
        push_blob(&srv, None, "odd/app", &config_bytes).await;
        let config = Desc::of(OCI_CONFIG, &config_bytes);
        let manifest = to_bytes(&image_manifest(
            OCI_MANIFEST,
            &config,
            std::slice::from_ref(&layer),
        ));
        push_manifest(&srv, None, "odd/app", tag, OCI_MANIFEST, &manifest).await;
        let m = api_ok(
            &srv,
            &format!("/api/v1/repositories/odd/app/manifests/{tag}"),
        )
        .await;
        assert!(m["config"].is_null(), "{tag}: {m}");
        let why = m["config_error"].as_str().unwrap_or_default();
        assert!(why.contains(reason), "{tag}: {why:?}");
        assert_eq!(m["layers"][0]["digest"], layer.digest.as_str());
        assert_eq!(m["size"], config_bytes.len() + layer.size);
        let tags = api_ok(&srv, "/api/v1/repositories/odd/app/tags").await;
        let t = tags["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == tag)
            .unwrap()
            .clone();
        assert_eq!(
            t["platforms"],
            json!([]),
            "{tag}: no platform without a readable config"
        );
    }
}

// ---- permissions ----------------------------------------------------------------------

fn password_of(user: &str) -> String {
    if user == "admin" {
        ADMIN_PW.to_owned()
    } else {
        format!("{user}-Pw-5ecret!")
    }
}

/// An admin; `reader` may pull `team/*`, `deleter` pull and delete there;
/// `pub/*` is public; `secret/*` is nobody's but the admin's.
async fn setup(cat: &Catalog) {
    admin::add_user(cat, "admin", ADMIN_PW, true).await.unwrap();
    for (user, actions) in [("reader", "pull"), ("deleter", "pull,delete")] {
        admin::add_user(cat, user, &password_of(user), false)
            .await
            .unwrap();
        admin::grant(cat, user, "team/*", actions).await.unwrap();
    }
    admin::set_public(cat, "pub/*", true).await.unwrap();
}

async fn token(srv: &Server, user: &str, scopes: &[String]) -> String {
    let mut params = vec![("service", SERVICE.to_owned())];
    params.extend(scopes.iter().map(|s| ("scope", s.clone())));
    let q = serde_urlencoded::to_string(&params).unwrap();
    let rb = srv
        .request(Method::GET, &format!("/token?{q}"))
        .basic_auth(user, Some(password_of(user)));
    let r = srv.send(rb).await.expect(200);
    r.json()["token"].as_str().unwrap().to_owned()
}

async fn as_user(srv: &Server, auth: &Auth<'_>, method: Method, path: &str) -> Resp {
    let rb = srv.request(method, path);
    let rb = match auth {
        Auth::Anonymous => rb,
        Auth::Bearer(t) => rb.bearer_auth(t),
        Auth::Basic(u) => rb.basic_auth(u, Some(password_of(u))),
    };
    srv.send(rb).await
}

enum Auth<'a> {
    Anonymous,
    Bearer(&'a str),
    Basic(&'a str),
}

#[tokio::test]
async fn permissions_hide_and_guard() {
    let (srv, ()) = Server::start_auth(|_| {}, async |cat: &Catalog| setup(cat).await).await;
    let repos = ["pub/tool", "secret/x", "team/app"];
    let scopes: Vec<String> = repos
        .iter()
        .map(|r| format!("repository:{r}:pull,push"))
        .collect();
    let admin_token = token(&srv, "admin", &scopes).await;
    for (i, r) in repos.iter().enumerate() {
        push_image(&srv, Some(&admin_token), r, "v1", "amd64", None, i as u8).await;
        push_image(
            &srv,
            Some(&admin_token),
            r,
            "v2",
            "amd64",
            None,
            10 + i as u8,
        )
        .await;
    }

    // Anonymous: public repositories only, in lists and in counts.
    let anon = Auth::Anonymous;
    let list = as_user(&srv, &anon, Method::GET, "/api/v1/repositories")
        .await
        .expect(200)
        .json();
    assert_eq!(names(&list), ["pub/tool"]);
    assert_eq!(list["total"], 1);
    let found = as_user(&srv, &anon, Method::GET, "/api/v1/repositories?q=secret")
        .await
        .expect(200)
        .json();
    assert_eq!(found["total"], 0);
    let stats = as_user(&srv, &anon, Method::GET, "/api/v1/stats")
        .await
        .expect(200)
        .json();
    assert_eq!(
        (stats["repositories"].as_u64(), stats["tags"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(stats["manifests"], 2);
    assert_eq!(stats["blobs"], 6, "only the public repository's blobs");
    // A private repository is answered exactly like an unknown one.
    for (private, unknown) in [
        (
            "/api/v1/repositories/team/app",
            "/api/v1/repositories/team/nope",
        ),
        (
            "/api/v1/repositories/team/app/tags",
            "/api/v1/repositories/team/nope/tags",
        ),
        (
            "/api/v1/repositories/team/app/manifests/v1",
            "/api/v1/repositories/team/nope/manifests/v1",
        ),
    ] {
        let a = as_user(&srv, &anon, Method::GET, private).await;
        let b = as_user(&srv, &anon, Method::GET, unknown).await;
        a.expect_error(404, "NAME_UNKNOWN");
        b.expect_error(404, "NAME_UNKNOWN");
        let strip = |r: &Resp| {
            r.json()["errors"][0]["message"]
                .as_str()
                .unwrap()
                .replace("app", "nope")
        };
        assert_eq!(strip(&a), strip(&b));
        assert_eq!(
            a.headers.get("www-authenticate"),
            b.headers.get("www-authenticate")
        );
    }
    as_user(
        &srv,
        &anon,
        Method::GET,
        "/api/v1/repositories/pub/tool/tags",
    )
    .await
    .expect(200);

    // reader (team/* pull), by Bearer token and by Basic: team/app and pub/tool.
    let reader_token = token(&srv, "reader", &[]).await;
    for who in [Auth::Bearer(&reader_token), Auth::Basic("reader")] {
        let list = as_user(&srv, &who, Method::GET, "/api/v1/repositories")
            .await
            .expect(200)
            .json();
        assert_eq!(names(&list), ["pub/tool", "team/app"]);
        let stats = as_user(&srv, &who, Method::GET, "/api/v1/stats")
            .await
            .expect(200)
            .json();
        assert_eq!(stats["repositories"], 2);
        as_user(
            &srv,
            &who,
            Method::GET,
            "/api/v1/repositories/team/app/manifests/v1",
        )
        .await
        .expect(200);
        as_user(&srv, &who, Method::GET, "/api/v1/repositories/secret/x")
            .await
            .expect_error(404, "NAME_UNKNOWN");
    }
    // The admin sees everything.
    let list = as_user(
        &srv,
        &Auth::Basic("admin"),
        Method::GET,
        "/api/v1/repositories",
    )
    .await
    .expect(200)
    .json();
    assert_eq!(names(&list), repos);

    // Bad credentials: 401, never a listing.
    let r = srv
        .send(
            srv.request(Method::GET, "/api/v1/repositories")
                .bearer_auth("not.a.token"),
        )
        .await;
    r.expect_error(401, "UNAUTHORIZED");
    let r = srv
        .send(
            srv.request(Method::GET, "/api/v1/repositories")
                .basic_auth("reader", Some("wrong")),
        )
        .await;
    r.expect_error(401, "UNAUTHORIZED");
    let r = srv
        .send(
            srv.request(Method::GET, "/api/v1/repositories")
                .header("authorization", "Digest x"),
        )
        .await;
    r.expect_error(401, "UNAUTHORIZED");

    // Deletes: anonymous on a public repository is asked to sign in, on a
    // private one told it does not exist; pull without delete is 403; the
    // delete right deletes.
    let del = |path: &str| format!("/api/v1/repositories/{path}");
    as_user(&srv, &anon, Method::DELETE, &del("pub/tool/tags/v1"))
        .await
        .expect_error(401, "UNAUTHORIZED");
    as_user(&srv, &anon, Method::DELETE, &del("team/app/tags/v1"))
        .await
        .expect_error(404, "NAME_UNKNOWN");
    as_user(
        &srv,
        &Auth::Bearer(&reader_token),
        Method::DELETE,
        &del("team/app/tags/v1"),
    )
    .await
    .expect_error(403, "DENIED");
    as_user(
        &srv,
        &Auth::Basic("reader"),
        Method::DELETE,
        &del("pub/tool/tags/v1"),
    )
    .await
    .expect_error(403, "DENIED");
    as_user(
        &srv,
        &Auth::Basic("deleter"),
        Method::DELETE,
        &del("secret/x/tags/v1"),
    )
    .await
    .expect_error(404, "NAME_UNKNOWN");
    let deleter_token = token(&srv, "deleter", &[]).await;
    as_user(
        &srv,
        &Auth::Bearer(&deleter_token),
        Method::DELETE,
        &del("team/app/tags/v1"),
    )
    .await
    .expect(204);
    as_user(
        &srv,
        &Auth::Basic("deleter"),
        Method::DELETE,
        &del("team/app/tags/v1"),
    )
    .await
    .expect_error(404, "MANIFEST_UNKNOWN");
    let tags = as_user(
        &srv,
        &Auth::Basic("reader"),
        Method::GET,
        &del("team/app/tags"),
    )
    .await
    .expect(200)
    .json();
    assert_eq!(names(&tags), ["v2"]);
    // Still there for the others.
    let tags = as_user(&srv, &anon, Method::GET, &del("pub/tool/tags"))
        .await
        .expect(200)
        .json();
    assert_eq!(names(&tags), ["v1", "v2"]);
}

// ---- an older catalog --------------------------------------------------------------------

/// A catalog written by a wharf from before the browse columns: the server
/// is stopped, the browse migration undone (columns, indexes, triggers and
/// its row in `_sqlx_migrations` gone, as an older binary left them), and a
/// new server started on it migrates and fills everything in.
#[tokio::test]
async fn an_older_catalog_browses_correctly() {
    let mut srv = Server::start().await;
    let img = push_image(&srv, None, "old/app", "v1", "arm64", Some("v8"), 1).await;
    push_manifest(&srv, None, "old/app", "also", OCI_MANIFEST, &img.manifest).await;
    let (_, children) = push_index(&srv, None, "old/multi", "latest").await;
    let before_repos = api_ok(&srv, "/api/v1/repositories").await;
    let before_tags = api_ok(&srv, "/api/v1/repositories/old/multi/tags").await;

    let url = srv.settings().catalog_url();
    downgrade(&url).await;
    srv.restart().await;

    let repos = api_ok(&srv, "/api/v1/repositories").await;
    assert_eq!(repos, before_repos, "repositories after the upgrade");
    assert_eq!(repos["items"][0]["tag_count"], 2);
    let tags = api_ok(&srv, "/api/v1/repositories/old/multi/tags").await;
    assert_eq!(tags, before_tags, "tags after the upgrade");
    let latest = &tags["items"][2];
    assert_eq!(
        latest["platforms"],
        json!(["linux/amd64", "linux/arm64/v8"])
    );
    assert_eq!(
        latest["size"],
        children.iter().map(Pushed::total_size).sum::<u64>()
    );
    let app = api_ok(&srv, "/api/v1/repositories/old/app/tags").await;
    assert_eq!(app["items"][1]["platforms"], json!(["linux/arm64/v8"]));
    assert_eq!(app["items"][1]["size"], img.total_size());
    let sorted = api_ok(&srv, "/api/v1/repositories?sort=pushed").await;
    assert_eq!(names(&sorted), ["old/multi", "old/app"]);
    // And it keeps counting after the upgrade.
    push_image(&srv, None, "old/app", "v3", "amd64", None, 3).await;
    assert_eq!(
        api_ok(&srv, "/api/v1/repositories/old/app").await["tag_count"],
        3
    );
}

/// Undoes migrations/*/20261128000002_browse.sql on the catalog at `url`.
async fn downgrade(url: &str) {
    use sqlx::Connection as _;
    let common = "DROP INDEX repositories_pushed; DROP INDEX tags_pushed; \
        DROP INDEX manifests_unsummarized; \
        ALTER TABLE repositories DROP COLUMN pushed_at; \
        ALTER TABLE repositories DROP COLUMN tag_count; \
        ALTER TABLE repositories DROP COLUMN manifest_count; \
        ALTER TABLE manifests DROP COLUMN total_size; \
        ALTER TABLE manifests DROP COLUMN platforms; \
        DELETE FROM _sqlx_migrations WHERE version = 20261128000002;";
    if url.starts_with("sqlite:") {
        let sql = format!(
            "DROP TRIGGER tags_insert_counted; DROP TRIGGER tags_update_pushed; \
             DROP TRIGGER tags_delete_counted; DROP TRIGGER manifests_insert_pushed; \
             DROP TRIGGER manifests_delete_counted; {common}"
        );
        let mut conn = sqlx::SqliteConnection::connect(url).await.expect("connect");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .expect("downgrade");
    } else {
        let sql = format!(
            "DROP TRIGGER tags_counted ON tags; DROP TRIGGER manifests_counted ON manifests; \
             DROP FUNCTION wharf_tags_counted(); DROP FUNCTION wharf_manifests_counted(); {common}"
        );
        let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .expect("downgrade");
    }
}
