//! The web UI over real HTTP against an in-process server (see `common`):
//! pages render and escape what they show, unknown things get the friendly
//! 404 page, every POST needs the CSRF token, sign-in sets a strict session
//! cookie, a signed-out viewer never sees a private repository's name (and
//! an invisible repository looks exactly like an unknown one), and deleting
//! a tag needs the delete right. Runs on PostgreSQL too (scripts/test).

mod common;

use common::*;
use reqwest::Method;
use serde_json::json;
use wharf_server::admin;
use wharf_server::catalog::Catalog;

const ADMIN_PW: &str = "Adm1n-Very-Secret-Pw";

fn pw(user: &str) -> String {
    if user == "admin" {
        ADMIN_PW.to_owned()
    } else {
        format!("{user}-Pw-5ecret!")
    }
}

async fn setup(cat: &Catalog) {
    admin::add_user(cat, "admin", ADMIN_PW, true).await.unwrap();
    for (user, actions) in [("reader", "pull"), ("deleter", "pull,delete")] {
        admin::add_user(cat, user, &pw(user), false).await.unwrap();
        admin::grant(cat, user, "team/*", actions).await.unwrap();
    }
    admin::set_public(cat, "pub/*", true).await.unwrap();
}

fn body(r: &Resp) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// The `Set-Cookie` header that sets `name`.
fn set_cookie<'a>(r: &'a Resp, name: &str) -> Option<&'a str> {
    r.headers
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
}

fn cookie_value(set_cookie: &str) -> String {
    set_cookie
        .split(';')
        .next()
        .and_then(|kv| kv.split_once('='))
        .map(|(_, v)| v.to_owned())
        .unwrap_or_default()
}

/// The CSRF token of the first form of a page.
fn csrf_of(page: &str) -> String {
    let at = page
        .find("name=\"csrf\" value=\"")
        .unwrap_or_else(|| panic!("no csrf field in {page}"));
    let rest = &page[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').unwrap()].to_owned()
}

/// A browser: keeps the cookies the server sets (by name).
#[derive(Default)]
struct Browser {
    cookies: Vec<(String, String)>,
}

impl Browser {
    fn keep(&mut self, r: &Resp) {
        for v in r.headers.get_all("set-cookie").iter() {
            let v = v.to_str().unwrap();
            let (name, value) = v.split(';').next().unwrap().split_once('=').unwrap();
            self.cookies.retain(|(n, _)| n != name);
            if !v.contains("Max-Age=0") {
                self.cookies.push((name.to_owned(), value.to_owned()));
            }
        }
    }

    fn header(&self) -> String {
        self.cookies
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    async fn get(&mut self, srv: &Server, path: &str) -> Resp {
        let r = srv
            .send(
                srv.request(Method::GET, path)
                    .header("cookie", self.header()),
            )
            .await;
        self.keep(&r);
        r
    }

    async fn post(&mut self, srv: &Server, path: &str, form: &[(&str, &str)]) -> Resp {
        let r = srv
            .send(
                srv.request(Method::POST, path)
                    .header("cookie", self.header())
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(serde_urlencoded::to_string(form).unwrap()),
            )
            .await;
        self.keep(&r);
        r
    }

    async fn sign_in(srv: &Server, user: &str) -> Browser {
        let mut b = Browser::default();
        let page = b.get(srv, "/login").await.expect(200);
        let csrf = csrf_of(&body(&page));
        let r = b
            .post(
                srv,
                "/login",
                &[
                    ("csrf", &csrf),
                    ("username", user),
                    ("password", &pw(user)),
                    ("next", "/"),
                ],
            )
            .await
            .expect(303);
        assert!(set_cookie(&r, "wharf_session").is_some(), "{r}");
        b
    }
}

/// A bearer token for `user` with pull,push on `repo`.
async fn token(srv: &Server, user: &str, repo: &str) -> String {
    let r = srv
        .send(
            srv.request(
                Method::GET,
                &format!("/token?service=wharf-registry&scope=repository:{repo}:pull,push,delete"),
            )
            .basic_auth(user, Some(pw(user))),
        )
        .await
        .expect(200);
    r.json()["token"].as_str().unwrap().to_owned()
}

/// Pushes a one-layer image with a config that has env, cmd and a label.
async fn push_as(
    srv: &Server,
    tok: Option<&str>,
    repo: &str,
    tag: &str,
    seed: u8,
) -> (String, String) {
    let config = to_bytes(&json!({
        "architecture": "amd64", "os": "linux",
        "created": "2026-01-02T03:04:05Z",
        "config": { "Env": ["PATH=/bin"], "Cmd": ["/bin/sh", "-c", "echo <b>hi</b>"],
                    "Labels": { "org.example": "<script>alert(1)</script>" } },
        "rootfs": { "type": "layers", "diff_ids": [] },
        "history": [{ "created_by": "RUN make <all>" }],
        "seed": seed,
    }));
    let layer = pattern(900 + seed as usize, seed);
    let auth = |rb: reqwest::RequestBuilder| match tok {
        Some(t) => rb.bearer_auth(t),
        None => rb,
    };
    for data in [&config, &layer] {
        let r = srv
            .send(
                auth(srv.request(
                    Method::POST,
                    &format!("/v2/{repo}/blobs/uploads/?digest={}", sha256(data)),
                ))
                .header("content-type", "application/octet-stream")
                .body(data.clone()),
            )
            .await;
        assert_eq!(r.status, 201, "{r}");
    }
    let layer_desc = Desc::of(OCI_LAYER, &layer);
    let manifest = to_bytes(&image_manifest(
        OCI_MANIFEST,
        &Desc::of(OCI_CONFIG, &config),
        std::slice::from_ref(&layer_desc),
    ));
    let r = srv
        .send(
            auth(srv.request(Method::PUT, &format!("/v2/{repo}/manifests/{tag}")))
                .header("content-type", OCI_MANIFEST)
                .body(manifest.clone()),
        )
        .await;
    assert_eq!(r.status, 201, "{r}");
    (sha256(&manifest), layer_desc.digest)
}

#[tokio::test]
async fn pages_render_what_was_pushed_escaped() {
    let srv = Server::start().await;
    let (digest, layer) = push_as(&srv, None, "team/app", "v1", 1).await;
    let mut b = Browser::default();

    let r = b.get(&srv, "/").await.expect(200);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert!(
        r.header("content-security-policy")
            .unwrap()
            .contains("script-src 'self'")
    );
    let page = body(&r);
    assert!(page.contains("href=\"/r/team/app\""), "{page}");
    assert!(page.contains("name=\"viewport\""));
    assert!(
        page.contains("<time "),
        "relative time with the exact one: {page}"
    );
    assert!(page.contains(" UTC\""), "{page}");
    assert!(!page.contains("Sign in"), "auth is off: no sign-in");

    let r = b.get(&srv, "/r/team/app").await.expect(200);
    let page = body(&r);
    let host = srv.addr.to_string();
    assert!(
        page.contains(&format!("docker pull {host}/team/app:v1")),
        "{page}"
    );
    assert!(page.contains(&format!("wharf-runner run {host}/team/app:v1")));
    assert!(page.contains(">Delete<"), "auth off: everyone may delete");

    let r = b
        .get(&srv, &format!("/r/team/app/-/manifest/{digest}"))
        .await
        .expect(200);
    let page = body(&r);
    assert!(page.contains(&format!("data-digest=\"{layer}\"")), "{page}");
    assert!(
        page.contains("RUN make &lt;all&gt;"),
        "history escaped: {page}"
    );
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "labels escaped"
    );
    assert!(!page.contains("<script>alert"), "{page}");
    assert!(page.contains("PATH=/bin"));

    // A Host header that is not a plain host is not echoed.
    let r = srv
        .send(
            srv.request(Method::GET, "/r/team/app")
                .header("host", "evil\"><x>"),
        )
        .await;
    assert!(
        body(&r).contains("docker pull localhost/team/app:v1") || r.status == 400,
        "{r}"
    );

    // Assets: embedded, immutable, hashed URLs; a wrong hash is a 404.
    let css = page.split("rel=\"stylesheet\" href=\"").nth(1).unwrap();
    let css = &css[..css.find('"').unwrap()];
    let r = b.get(&srv, css).await.expect(200);
    assert_eq!(r.header("content-type"), Some("text/css; charset=utf-8"));
    assert!(r.header("cache-control").unwrap().contains("immutable"));
    b.get(&srv, "/static/000000000000/app.css")
        .await
        .expect(404);
}

#[tokio::test]
async fn search_with_sql_or_html_is_escaped_and_changes_nothing() {
    let srv = Server::start().await;
    push_as(&srv, None, "team/app", "v1", 1).await;
    let mut b = Browser::default();
    for q in [
        "<script>alert(1)</script>",
        "' OR 1=1 --",
        "%",
        "_",
        "x'); DROP TABLE repositories; --",
    ] {
        let r = b
            .get(&srv, &format!("/?q={}", urlencode(q)))
            .await
            .expect(200);
        let page = body(&r);
        assert!(!page.contains("<script>alert"), "{page}");
        assert!(
            !page.contains("href=\"/r/team/app\""),
            "{q} matched: {page}"
        );
        assert!(page.contains("No repository matches"), "{page}");
    }
    let page = body(&b.get(&srv, "/?q=%3Cscript%3E").await);
    assert!(page.contains("&lt;script&gt;"), "{page}");
    // Still there, found by a real substring.
    let page = body(&b.get(&srv, "/?q=APP&sort=pushed").await.expect(200));
    assert!(page.contains("href=\"/r/team/app\""), "{page}");
    b.get(&srv, "/?sort=bogus").await.expect(400);
    b.get(&srv, "/?offset=-1").await.expect(400);
    b.get(&srv, &format!("/?q={}", "a".repeat(3000)))
        .await
        .expect(400);
}

fn urlencode(s: &str) -> String {
    serde_urlencoded::to_string([("", s)]).unwrap()[1..].to_owned()
}

#[tokio::test]
async fn unknown_things_get_the_friendly_404_page() {
    let srv = Server::start().await;
    let (digest, _) = push_as(&srv, None, "team/app", "v1", 1).await;
    let mut b = Browser::default();
    let zero = format!("sha256:{}", "0".repeat(64));
    for path in [
        "/r/nope".to_owned(),
        "/r/team/app/-/manifest/nope".to_owned(),
        format!("/r/team/app/-/manifest/{zero}"),
        format!("/r/other/-/manifest/{digest}"),
        "/r/Not..A..Name".to_owned(),
        "/r/team/app/-/delete/nope".to_owned(),
        "/r/team/app/-/whatever/x".to_owned(),
    ] {
        let r = b.get(&srv, &path).await.expect(404);
        assert_eq!(
            r.header("content-type"),
            Some("text/html; charset=utf-8"),
            "{path}"
        );
        let page = body(&r);
        assert!(page.contains("Not found"), "{path}: {page}");
        assert!(page.contains("Back to the repositories"), "{path}");
    }
}

#[tokio::test]
async fn every_post_needs_the_csrf_token() {
    let srv = Server::start().await;
    push_as(&srv, None, "team/app", "v1", 1).await;
    let mut b = Browser::default();
    let page = b.get(&srv, "/r/team/app/-/delete/v1").await.expect(200);
    let csrf = csrf_of(&body(&page));
    // Without the field, with a wrong one, or without the cookie: 403.
    b.post(&srv, "/r/team/app/-/delete/v1", &[])
        .await
        .expect(403);
    b.post(
        &srv,
        "/r/team/app/-/delete/v1",
        &[("csrf", "x".repeat(43).as_str())],
    )
    .await
    .expect(403);
    let mut stranger = Browser::default();
    stranger
        .post(&srv, "/r/team/app/-/delete/v1", &[("csrf", &csrf)])
        .await
        .expect(403);
    stranger
        .post(&srv, "/logout", &[("csrf", &csrf)])
        .await
        .expect(403);
    srv.get("/v2/team/app/manifests/v1").await.expect(200);
    // With it, the tag goes, and the repository page says so.
    let r = b
        .post(&srv, "/r/team/app/-/delete/v1", &[("csrf", &csrf)])
        .await
        .expect(303);
    assert_eq!(r.header("location"), Some("/r/team/app?deleted=v1"));
    srv.get("/v2/team/app/manifests/v1").await.expect(404);
    let page = body(&b.get(&srv, "/r/team/app?deleted=v1").await.expect(200));
    assert!(page.contains("was deleted"), "{page}");
}

#[tokio::test]
async fn sign_in_sets_a_strict_signed_session_cookie() {
    let (srv, ()) = Server::start_auth(|_| {}, async |c: &Catalog| setup(c).await).await;
    let mut b = Browser::default();
    let r = b.get(&srv, "/login").await.expect(200);
    let anon = set_cookie(&r, "wharf_csrf")
        .expect("a CSRF cookie for the form")
        .to_owned();
    assert!(
        anon.contains("HttpOnly") && anon.contains("SameSite=Strict") && anon.contains("Path=/"),
        "{anon}"
    );
    assert!(!anon.contains("Secure"), "plain HTTP: {anon}");
    let csrf = csrf_of(&body(&r));
    assert_eq!(csrf, cookie_value(&anon));

    let r = b
        .post(
            &srv,
            "/login",
            &[
                ("csrf", &csrf),
                ("username", "reader"),
                ("password", "wrong"),
                ("next", "/"),
            ],
        )
        .await
        .expect(401);
    assert!(body(&r).contains("Invalid username or password"));
    assert!(set_cookie(&r, "wharf_session").is_none());
    // No CSRF token: refused before the password is even checked.
    b.post(
        &srv,
        "/login",
        &[("username", "reader"), ("password", &pw("reader"))],
    )
    .await
    .expect(403);

    let r = b
        .post(
            &srv,
            "/login",
            &[
                ("csrf", &csrf),
                ("username", "reader"),
                ("password", &pw("reader")),
                ("next", "//evil.example/"),
            ],
        )
        .await
        .expect(303);
    assert_eq!(r.header("location"), Some("/"), "next stays on this site");
    let session = set_cookie(&r, "wharf_session").unwrap().to_owned();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=28800"] {
        assert!(session.contains(attr), "{attr} in {session}");
    }
    let page = body(&b.get(&srv, "/").await.expect(200));
    assert!(page.contains("Signed in as"), "{page}");
    // Signed in, /login goes straight on to `next` (a path of this site).
    let r = b
        .get(&srv, "/login?next=%2Fr%2Fteam%2Fapp")
        .await
        .expect(303);
    assert_eq!(r.header("location"), Some("/r/team/app"));

    // The session is no registry token, and a registry token is no session.
    let jwt = cookie_value(&session);
    let r = srv
        .send(srv.request(Method::GET, "/v2/").bearer_auth(&jwt))
        .await;
    assert_eq!(r.status, 401, "{r}");
    let tok = token(&srv, "reader", "team/app").await;
    let mut forged = Browser {
        cookies: vec![("wharf_session".into(), tok)],
    };
    let r = forged.get(&srv, "/").await.expect(200);
    assert!(!body(&r).contains("Signed in as"));
    assert!(
        set_cookie(&r, "wharf_session")
            .unwrap()
            .contains("Max-Age=0"),
        "stale cookie cleared"
    );

    // Sign out: the cookie is cleared.
    let csrf = csrf_of(&page);
    let r = b
        .post(&srv, "/logout", &[("csrf", &csrf)])
        .await
        .expect(303);
    assert!(
        set_cookie(&r, "wharf_session")
            .unwrap()
            .contains("Max-Age=0")
    );
    assert!(!body(&b.get(&srv, "/").await).contains("Signed in as"));
}

#[tokio::test]
async fn failed_sign_ins_are_rate_limited() {
    let (srv, ()) = Server::start_auth(|_| {}, async |c: &Catalog| setup(c).await).await;
    let mut b = Browser::default();
    let csrf = csrf_of(&body(&b.get(&srv, "/login").await));
    let mut statuses = Vec::new();
    for _ in 0..7 {
        let r = b
            .post(
                &srv,
                "/login",
                &[
                    ("csrf", &csrf),
                    ("username", "reader"),
                    ("password", "nope"),
                ],
            )
            .await;
        statuses.push(r.status.as_u16());
    }
    assert_eq!(statuses.last(), Some(&429), "{statuses:?}");
}

#[tokio::test]
async fn signed_out_viewers_never_see_private_names() {
    let (srv, ()) = Server::start_auth(|_| {}, async |c: &Catalog| setup(c).await).await;
    let admin_tok = token(&srv, "admin", "team/secret").await;
    push_as(&srv, Some(&admin_tok), "team/secret", "v1", 1).await;
    let admin_tok = token(&srv, "admin", "pub/open").await;
    push_as(&srv, Some(&admin_tok), "pub/open", "v1", 2).await;

    let mut anon = Browser::default();
    for path in ["/", "/?q=secret", "/?q=team", "/?sort=pushed"] {
        let page = body(&anon.get(&srv, path).await.expect(200));
        assert!(!page.contains("team/secret"), "{path}: {page}");
    }
    let page = body(&anon.get(&srv, "/").await);
    assert!(page.contains("href=\"/r/pub/open\""), "{page}");
    assert!(
        page.contains("<b>1</b> repository ·"),
        "counts only what is visible: {page}"
    );
    // An invisible repository is answered exactly like an unknown one.
    // (The pages differ only by the path, in the sign-in link's `next`.)
    let hidden = body(&anon.get(&srv, "/r/team/secret").await.expect(404));
    let unknown = body(&anon.get(&srv, "/r/team/nothing").await.expect(404));
    assert!(
        hidden.contains("href=\"/login?next=%2Fr%2Fteam%2Fsecret\""),
        "{hidden}"
    );
    assert_eq!(
        hidden.replace("secret", "X"),
        unknown.replace("nothing", "X")
    );
    let hidden = body(
        &anon
            .get(&srv, "/r/team/secret/-/manifest/v1")
            .await
            .expect(404),
    );
    let unknown = body(
        &anon
            .get(&srv, "/r/team/nothing/-/manifest/v1")
            .await
            .expect(404),
    );
    assert_eq!(
        hidden.replace("secret", "X"),
        unknown.replace("nothing", "X")
    );
    let page = body(&anon.get(&srv, "/r/pub/open").await.expect(200));
    assert!(!page.contains(">Delete<"), "{page}");

    // A reader sees it, but may not delete: no button, and 403 on the POST.
    let mut reader = Browser::sign_in(&srv, "reader").await;
    let page = body(&reader.get(&srv, "/").await);
    assert!(page.contains("href=\"/r/team/secret\""), "{page}");
    let page = body(&reader.get(&srv, "/r/team/secret").await.expect(200));
    assert!(!page.contains(">Delete<"), "{page}");
    let csrf = csrf_of(&page);
    reader
        .get(&srv, "/r/team/secret/-/delete/v1")
        .await
        .expect(403);
    reader
        .post(&srv, "/r/team/secret/-/delete/v1", &[("csrf", &csrf)])
        .await
        .expect(403);
    // A public repository the reader may see but not delete in: 403.
    reader
        .post(&srv, "/r/pub/open/-/delete/v1", &[("csrf", &csrf)])
        .await
        .expect(403);
    // A repository the viewer may not even see: 404 on the POST.
    let mut anon_post = Browser::default();
    let page = body(&anon_post.get(&srv, "/login").await);
    let csrf_anon = csrf_of(&page);
    anon_post
        .post(&srv, "/r/team/secret/-/delete/v1", &[("csrf", &csrf_anon)])
        .await
        .expect(404);

    // A deleter sees the button, confirms, and the tag is gone.
    let mut deleter = Browser::sign_in(&srv, "deleter").await;
    let page = body(&deleter.get(&srv, "/r/team/secret").await.expect(200));
    assert!(page.contains(">Delete<"), "{page}");
    let confirm = body(
        &deleter
            .get(&srv, "/r/team/secret/-/delete/v1")
            .await
            .expect(200),
    );
    let csrf = csrf_of(&confirm);
    deleter
        .post(&srv, "/r/team/secret/-/delete/v1", &[("csrf", &csrf)])
        .await
        .expect(303);
    let tok = token(&srv, "admin", "team/secret").await;
    let r = srv
        .send(
            srv.request(Method::GET, "/v2/team/secret/manifests/v1")
                .bearer_auth(tok),
        )
        .await;
    assert_eq!(r.status, 404, "{r}");
}

/// Over TLS (the TLS listener), the UI's cookies are `Secure`.
#[tokio::test]
async fn cookies_are_secure_over_tls() {
    install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = wharf_server::Settings::with_data_dir(dir.path());
    settings.storage.fsync = false;
    settings.tls.self_signed = true;
    let _db = use_test_catalog(&mut settings).await;
    let tls = wharf_server::tls::server_config(&settings)
        .expect("TLS config")
        .expect("TLS is on");
    let made = tls.self_signed.expect("self-signed files");
    let state = wharf_server::build_state(&settings).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(wharf_server::serve_on_with(
        listener,
        wharf_server::app(state),
        Some(tls.config),
        std::future::pending(),
    ));
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&made.ca_cert).unwrap()).unwrap();
    let client = reqwest::Client::builder()
        .tls_backend_rustls()
        .tls_certs_only([ca])
        .no_proxy()
        .build()
        .unwrap();
    let r = client
        .get(format!("https://localhost:{port}/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let cookie = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("wharf_csrf="))
        .expect("a CSRF cookie")
        .to_owned();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/", "Secure"] {
        assert!(cookie.contains(attr), "{attr} in {cookie}");
    }
    task.abort();
}

async fn manifest_size(srv: &Server, repo: &str, digest: &str) -> u64 {
    srv.head(&format!("/v2/{repo}/manifests/{digest}"))
        .await
        .must_header("content-length")
        .parse()
        .unwrap()
}

/// An index's page lists its images (platform, link to each); a manifest's
/// page lists the artifacts that refer to it.
#[tokio::test]
async fn index_platforms_and_referrers_are_shown() {
    let srv = Server::start().await;
    let (amd, _) = push_as(&srv, None, "team/multi", "amd", 1).await;
    let (arm, _) = push_as(&srv, None, "team/multi", "arm", 2).await;
    let amd_size = manifest_size(&srv, "team/multi", &amd).await;
    let arm_size = manifest_size(&srv, "team/multi", &arm).await;
    let index = to_bytes(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            { "mediaType": OCI_MANIFEST, "digest": amd, "size": amd_size,
              "platform": { "os": "linux", "architecture": "amd64" } },
            { "mediaType": OCI_MANIFEST, "digest": arm, "size": arm_size,
              "platform": { "os": "linux", "architecture": "arm64", "variant": "v8" } },
        ],
    }));
    srv.push_manifest_ok("team/multi", "latest", OCI_INDEX, &index)
        .await;
    // A signature-like artifact whose subject is the amd64 image.
    let empty = b"{}".to_vec();
    srv.push_blob("team/multi", &empty).await;
    let artifact = to_bytes(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.signature",
        "config": Desc::of(OCI_EMPTY, &empty).json(),
        "layers": [Desc::of(OCI_EMPTY, &empty).json()],
        "subject": { "mediaType": OCI_MANIFEST, "digest": amd, "size": amd_size },
    }));
    let sig = srv
        .push_manifest_ok("team/multi", &sha256(&artifact), OCI_MANIFEST, &artifact)
        .await;

    let mut b = Browser::default();
    let page = body(
        &b.get(&srv, "/r/team/multi/-/manifest/latest")
            .await
            .expect(200),
    );
    assert!(page.contains("id=\"platforms\""), "{page}");
    assert!(
        page.contains("linux/amd64") && page.contains("linux/arm64/v8"),
        "{page}"
    );
    assert!(
        page.contains(&format!("href=\"/r/team/multi/-/manifest/{amd}\"")),
        "{page}"
    );
    assert!(
        page.contains(&format!("href=\"/r/team/multi/-/manifest/{arm}\"")),
        "{page}"
    );
    let page = body(
        &b.get(&srv, &format!("/r/team/multi/-/manifest/{amd}"))
            .await
            .expect(200),
    );
    assert!(page.contains("application/vnd.example.signature"), "{page}");
    assert!(
        page.contains(&format!("href=\"/r/team/multi/-/manifest/{sig}\"")),
        "{page}"
    );
    assert!(
        page.contains(&format!("docker pull {}/team/multi@{amd}", srv.addr)),
        "{page}"
    );
    // The repository page shows the index's platforms on its tag.
    let page = body(&b.get(&srv, "/r/team/multi").await.expect(200));
    assert!(page.contains("linux/arm64/v8"), "{page}");
}

/// The fleet's pages: an admin sees the nodes (status, resources, labels)
/// and the deployments (replicas, history), every name escaped; signed out
/// is sent to sign in; a user who is not an admin gets the 403 page.
#[tokio::test]
async fn fleet_pages_show_nodes_and_deployments_to_admins_only() {
    let (srv, ()) = Server::start_auth(|_| {}, async |c: &Catalog| setup(c).await).await;
    let as_admin = |m: Method, path: &str| srv.request(m, path).basic_auth("admin", Some(ADMIN_PW));
    let token = srv
        .send(as_admin(Method::POST, "/api/v1/nodes/tokens").json(&json!({"ttl_secs": 600})))
        .await
        .expect(201)
        .json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let facts = json!({
        "addresses": ["10.9.8.7"], "os": "linux", "arch": "amd64", "cpus": 4,
        "memory_bytes": 8u64 << 30, "disk_bytes": 100u64 << 30,
        "labels": {"zone": "<b>east</b>"}, "version": "test",
    });
    srv.send(
        srv.request(Method::POST, "/api/v1/nodes/join")
            .json(&json!({"token": token, "name": "edge-1", "facts": facts})),
    )
    .await
    .expect(200);
    srv.send(as_admin(Method::POST, "/api/v1/deployments").json(&json!({
        "name": "web", "image": "team/app:1", "replicas": 2, "cmd": ["sh", "-c", "echo <i>hi</i>"],
    })))
    .await
    .expect(201);

    let mut admin = Browser::sign_in(&srv, "admin").await;
    let page = body(&admin.get(&srv, "/nodes").await.expect(200));
    assert!(
        page.contains("edge-1") && page.contains("10.9.8.7"),
        "{page}"
    );
    assert!(page.contains("ready") && page.contains("8.59 GB"), "{page}");
    assert!(
        page.contains("zone=&lt;b&gt;east&lt;/b&gt;"),
        "label not escaped: {page}"
    );
    assert!(page.contains(r#"href="/deployments""#), "nav link: {page}");

    let page = body(&admin.get(&srv, "/deployments").await.expect(200));
    assert!(page.contains(r#"href="/deployments/web""#), "{page}");
    assert!(page.contains("team/app:1"), "{page}");
    let page = body(&admin.get(&srv, "/deployments/web").await.expect(200));
    assert!(
        page.contains("web.0") && page.contains("web.1"),
        "replicas: {page}"
    );
    assert!(
        page.contains("echo &lt;i&gt;hi&lt;/i&gt;"),
        "command not escaped: {page}"
    );
    assert!(page.contains("edge-1"), "placed on the node: {page}");
    let r = admin.get(&srv, "/deployments/nope").await.expect(404);
    assert!(body(&r).contains("Not found"));

    let mut anon = Browser::default();
    let r = anon.get(&srv, "/nodes").await.expect(303);
    assert!(r.must_header("location").starts_with("/login"), "{r}");
    assert!(!body(&anon.get(&srv, "/").await.expect(200)).contains("/nodes"));
    let mut reader = Browser::sign_in(&srv, "reader").await;
    let r = reader.get(&srv, "/deployments/web").await.expect(403);
    assert!(!body(&r).contains("team/app"), "{r}");
}
