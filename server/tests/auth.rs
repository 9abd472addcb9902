//! Auth, over real HTTP against a wharf server started in-process with
//! `auth.enabled = true` (see `common`): the Docker token protocol (challenge,
//! `/token`, ES256 bearer tokens), grants and scope intersection, what every
//! endpoint requires, forged and malformed credentials, refresh tokens,
//! failed-login rate limiting, robots, and the first-admin bootstrap.
//!
//! Each test starts its own server on its own data directory (and so has its
//! own failed-login limiter: every request comes from 127.0.0.1, and the
//! limiter counts per client address too).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use common::*;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use reqwest::Method;
use reqwest::header::HeaderValue;
use serde_json::{Value, json};
use wharf_server::Settings;
use wharf_server::admin;
use wharf_server::catalog::Catalog;

const SERVICE: &str = "wharf-registry";
const ISSUER: &str = "wharf";
const ADMIN_PW: &str = "Adm1n-Very-Secret-Pw";

/// Users of the standard fixture and their actions on `team/*`.
const USERS: &[(&str, &str)] = &[
    ("reader", "pull"),
    ("writer", "pull,push"),
    ("deleter", "pull,delete"),
    ("pusher", "push"),
];

/// The password of a fixture user.
fn password_of(user: &str) -> String {
    if user == "admin" {
        ADMIN_PW.to_owned()
    } else {
        format!("{user}-Pw-5ecret!")
    }
}

/// The standard fixture: an admin, the `USERS` with their grants on
/// `team/*`, and `pub/*` public.
async fn setup_users(cat: &Catalog) {
    admin::add_user(cat, "admin", ADMIN_PW, true)
        .await
        .expect("add admin");
    for (user, actions) in USERS {
        admin::add_user(cat, user, &password_of(user), false)
            .await
            .expect("add user");
        admin::grant(cat, user, "team/*", actions)
            .await
            .expect("grant");
    }
    admin::set_public(cat, "pub/*", true)
        .await
        .expect("set public");
}

async fn start() -> Server {
    start_with(|_| {}).await
}

async fn start_with(tweak: impl FnOnce(&mut Settings)) -> Server {
    Server::start_auth(tweak, async |cat: &Catalog| setup_users(cat).await)
        .await
        .0
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn b64url() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
}

fn basic(user: &str, password: &str) -> String {
    let pair = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

fn scope(repo: &str, actions: &str) -> String {
    format!("repository:{repo}:{actions}")
}

// ---- the token endpoint ---------------------------------------------------------

/// `GET /token` with these query parameters and, if given, Basic credentials.
async fn get_token(srv: &Server, login: Option<(&str, &str)>, params: &[(&str, &str)]) -> Resp {
    let q = serde_urlencoded::to_string(params).expect("encode the query");
    let mut rb = srv.request(Method::GET, &format!("/token?{q}"));
    if let Some((user, password)) = login {
        rb = rb.basic_auth(user, Some(password));
    }
    srv.send(rb).await
}

/// `POST /token` with this form.
async fn post_token(srv: &Server, form: &[(&str, &str)]) -> Resp {
    let body = serde_urlencoded::to_string(form).expect("encode the form");
    post_token_raw(srv, body.into_bytes()).await
}

async fn post_token_raw(srv: &Server, body: Vec<u8>) -> Resp {
    srv.send(
        srv.request(Method::POST, "/token")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body),
    )
    .await
}

/// `service` and one `scope` parameter per scope.
fn token_params<'a>(scopes: &'a [&'a str]) -> Vec<(&'a str, &'a str)> {
    let mut params = vec![("service", SERVICE)];
    params.extend(scopes.iter().map(|s| ("scope", *s)));
    params
}

/// A token for a fixture user (None: anonymous) with these scopes.
async fn token(srv: &Server, user: Option<&str>, scopes: &[&str]) -> String {
    let password = user.map(password_of);
    let login = user.zip(password.as_deref());
    let r = get_token(srv, login, &token_params(scopes))
        .await
        .expect(200);
    r.json()["token"].as_str().expect("a token").to_owned()
}

/// A token for a fixture user with every action on each of `repos`.
async fn token_all(srv: &Server, user: Option<&str>, repos: &[&str]) -> String {
    let scopes: Vec<String> = repos.iter().map(|r| scope(r, "pull,push,delete")).collect();
    let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
    token(srv, user, &scopes).await
}

fn jwt_part(token: &str, i: usize) -> Value {
    let part = token.split('.').nth(i).expect("a JWT part");
    let bytes = b64url().decode(part).expect("base64url JWT part");
    serde_json::from_slice(&bytes).expect("a JSON JWT part")
}

fn claims(token: &str) -> Value {
    jwt_part(token, 1)
}

/// The actions a token grants on a repository, sorted.
fn granted(token: &str, repo: &str) -> Vec<String> {
    let c = claims(token);
    let mut out: Vec<String> = c["access"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["type"] == "repository" && a["name"] == repo)
        .flat_map(|a| a["actions"].as_array().cloned().unwrap_or_default())
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    out.sort();
    out.dedup();
    out
}

// ---- challenges -------------------------------------------------------------------

/// The parameters of a `WWW-Authenticate: Bearer k="v",...` challenge.
#[track_caller]
fn challenge(r: &Resp) -> BTreeMap<String, String> {
    let v = r.must_header("www-authenticate");
    let rest = v
        .strip_prefix("Bearer ")
        .unwrap_or_else(|| panic!("{}: not a Bearer challenge: {v}", r.what));
    let mut out = BTreeMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(' ' | ',')) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        if key.is_empty() {
            break;
        }
        assert_eq!(chars.next(), Some('"'), "unquoted value in {v}");
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('\\') => value.push(chars.next().expect("escaped char")),
                Some('"') => break,
                Some(c) => value.push(c),
                None => panic!("unterminated value in {v}"),
            }
        }
        assert!(
            out.insert(key.trim().to_owned(), value).is_none(),
            "repeated key in {v}"
        );
    }
    out
}

fn realm_of(srv: &Server) -> String {
    srv.url("/token")
}

/// A 401 with the Bearer challenge a docker client follows: realm, service,
/// and `scope` and `error` exactly as given (None: absent). The body, when
/// there is one (not for HEAD), is the JSON error UNAUTHORIZED.
#[track_caller]
fn expect_challenge(srv: &Server, r: &Resp, scope: Option<&str>, error: Option<&str>) {
    assert_eq!(r.status, 401, "{}: expected 401, got {r}", r.what);
    let c = challenge(r);
    assert_eq!(
        c.get("realm").map(String::as_str),
        Some(realm_of(srv).as_str()),
        "{}: realm in {c:?}",
        r.what
    );
    assert_eq!(
        c.get("service").map(String::as_str),
        Some(SERVICE),
        "{}: service in {c:?}",
        r.what
    );
    assert_eq!(
        c.get("scope").map(String::as_str),
        scope,
        "{}: scope in {c:?}",
        r.what
    );
    assert_eq!(
        c.get("error").map(String::as_str),
        error,
        "{}: error in {c:?}",
        r.what
    );
    if !r.body.is_empty() {
        r.expect_error(401, "UNAUTHORIZED");
    }
}

/// A 403 DENIED (status only for HEAD, which has no body).
#[track_caller]
fn expect_denied(r: &Resp) {
    if r.body.is_empty() {
        assert_eq!(r.status, 403, "{}: expected 403, got {r}", r.what);
    } else {
        r.expect_error(403, "DENIED");
    }
}

// ---- requests with a token ----------------------------------------------------------

async fn call(srv: &Server, tok: Option<&str>, method: Method, path: &str) -> Resp {
    srv.send(srv.request_as(tok, method, path)).await
}

async fn call_with_body(
    srv: &Server,
    tok: Option<&str>,
    method: Method,
    path: &str,
    content_type: &str,
    body: Vec<u8>,
) -> Resp {
    let rb = srv
        .request_as(tok, method, path)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .body(body);
    srv.send(rb).await
}

/// A request whose Authorization header is exactly `value`.
async fn call_with_authorization(srv: &Server, path: &str, value: HeaderValue) -> Resp {
    srv.send(
        srv.request(Method::GET, path)
            .header("authorization", value),
    )
    .await
}

async fn push_blob_as(srv: &Server, tok: &str, repo: &str, data: &[u8]) -> String {
    let digest = sha256(data);
    let r = call_with_body(
        srv,
        Some(tok),
        Method::POST,
        &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
        "application/octet-stream",
        data.to_vec(),
    )
    .await;
    assert_eq!(r.status, 201, "push_blob {repo} {digest}: {r}");
    digest
}

async fn put_manifest_as(
    srv: &Server,
    tok: Option<&str>,
    repo: &str,
    reference: &str,
    body: &[u8],
) -> Resp {
    call_with_body(
        srv,
        tok,
        Method::PUT,
        &format!("/v2/{repo}/manifests/{reference}"),
        OCI_MANIFEST,
        body.to_vec(),
    )
    .await
}

fn layer_bytes(seed: u8) -> Vec<u8> {
    pattern(700 + seed as usize, seed)
}

/// Pushes a config, a layer and an OCI manifest under `tag` with `tok`.
async fn push_image_as(srv: &Server, tok: &str, repo: &str, tag: &str, seed: u8) -> Image {
    let config_bytes = to_bytes(&json!({
        "architecture": "amd64",
        "os": "linux",
        "rootfs": { "type": "layers", "diff_ids": [] },
        "seed": seed,
    }));
    let layer = layer_bytes(seed);
    push_blob_as(srv, tok, repo, &config_bytes).await;
    push_blob_as(srv, tok, repo, &layer).await;
    let config = Desc::of(OCI_CONFIG, &config_bytes);
    let layer = Desc::of(OCI_LAYER, &layer);
    let manifest = to_bytes(&image_manifest(
        OCI_MANIFEST,
        &config,
        std::slice::from_ref(&layer),
    ));
    let r = put_manifest_as(srv, Some(tok), repo, tag, &manifest)
        .await
        .expect(201);
    let digest = r.must_header("docker-content-digest").to_owned();
    assert_eq!(digest, sha256(&manifest));
    Image {
        manifest,
        digest,
        config,
        layer,
    }
}

/// The repositories `/v2/_catalog` shows to the bearer of `tok`, all pages.
async fn catalog_as(srv: &Server, tok: &str, page_size: Option<u32>) -> Vec<String> {
    let mut path = match page_size {
        Some(n) => format!("/v2/_catalog?n={n}"),
        None => "/v2/_catalog".to_owned(),
    };
    let mut all = Vec::new();
    for _ in 0..100 {
        let r = call(srv, Some(tok), Method::GET, &path).await.expect(200);
        let items = r.json()["repositories"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if let Some(n) = page_size {
            assert!(items.len() <= n as usize, "page larger than n: {r}");
        }
        all.extend(items.iter().filter_map(|v| v.as_str().map(str::to_owned)));
        match r.next_link() {
            Some(next) => path = next,
            None => return all,
        }
    }
    panic!("the catalog never ends");
}

// ---- the signing key, for forging ------------------------------------------------

fn key_pem(srv: &Server) -> String {
    std::fs::read_to_string(srv.data_dir().join("token-key.pem")).expect("read token-key.pem")
}

fn public_pem(private_pem: &str) -> String {
    p256::SecretKey::from_pkcs8_pem(private_pem)
        .expect("a PKCS#8 P-256 key")
        .public_key()
        .to_public_key_pem(LineEnding::LF)
        .expect("encode the public key")
}

/// Access claims as the server writes them, for `sub`, with every action on
/// `repo`.
fn forged_claims(sub: &str, repo: &str) -> Value {
    let now = now_secs();
    json!({
        "iss": ISSUER,
        "sub": sub,
        "aud": SERVICE,
        "exp": now + 300,
        "nbf": now,
        "iat": now,
        "jti": "forged",
        "access": [{ "type": "repository", "name": repo, "actions": ["pull", "push", "delete"] }],
    })
}

fn sign_es256(pem: &str, kid: Option<String>, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = kid;
    let key = EncodingKey::from_ec_pem(pem.as_bytes()).expect("an EC key");
    jsonwebtoken::encode(&header, claims, &key).expect("sign")
}

fn unsigned_jwt(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        b64url().encode(serde_json::to_vec(header).expect("JSON")),
        b64url().encode(serde_json::to_vec(claims).expect("JSON")),
    )
}

// =====================================================================================
// Challenges
// =====================================================================================

#[tokio::test]
async fn challenges_name_realm_service_and_the_scope_each_request_needs() {
    let srv = start().await;
    let d = sha256(b"some blob");
    let id = uuid::Uuid::new_v4();

    // The base endpoint: no scope.
    let r = call(&srv, None, Method::GET, "/v2/").await;
    expect_challenge(&srv, &r, None, None);

    let pull = "repository:team/app:pull";
    let push = "repository:team/app:pull,push";
    let delete = "repository:team/app:delete";
    let cases: Vec<(Method, String, &str)> = vec![
        (Method::GET, "/v2/team/app/manifests/v1".into(), pull),
        (Method::HEAD, "/v2/team/app/manifests/v1".into(), pull),
        (Method::GET, format!("/v2/team/app/blobs/{d}"), pull),
        (Method::HEAD, format!("/v2/team/app/blobs/{d}"), pull),
        (Method::GET, "/v2/team/app/tags/list".into(), pull),
        (Method::GET, format!("/v2/team/app/referrers/{d}"), pull),
        (Method::POST, "/v2/team/app/blobs/uploads/".into(), push),
        (
            Method::POST,
            format!("/v2/team/app/blobs/uploads/?digest={d}"),
            push,
        ),
        (
            Method::GET,
            format!("/v2/team/app/blobs/uploads/{id}"),
            push,
        ),
        (
            Method::PATCH,
            format!("/v2/team/app/blobs/uploads/{id}"),
            push,
        ),
        (
            Method::PUT,
            format!("/v2/team/app/blobs/uploads/{id}?digest={d}"),
            push,
        ),
        (
            Method::DELETE,
            format!("/v2/team/app/blobs/uploads/{id}"),
            push,
        ),
        (Method::PUT, "/v2/team/app/manifests/v1".into(), push),
        (
            Method::DELETE,
            format!("/v2/team/app/manifests/{d}"),
            delete,
        ),
        (Method::DELETE, format!("/v2/team/app/blobs/{d}"), delete),
        (
            Method::GET,
            "/v2/a/b/c/manifests/latest".into(),
            "repository:a/b/c:pull",
        ),
        (Method::GET, "/v2/_catalog".into(), "registry:catalog:*"),
    ];
    for (method, path, want) in cases {
        let r = call(&srv, None, method.clone(), &path).await;
        expect_challenge(&srv, &r, Some(want), None);
    }

    // A cross-mount reads its source: pull is asked there too.
    let r = call(
        &srv,
        None,
        Method::POST,
        &format!("/v2/team/app/blobs/uploads/?mount={d}&from=other/src"),
    )
    .await;
    expect_challenge(
        &srv,
        &r,
        Some("repository:team/app:pull,push repository:other/src:pull"),
        None,
    );
}

#[tokio::test]
async fn a_docker_client_following_the_challenge_gets_in() {
    let srv = start().await;
    let admin_tok = token_all(&srv, Some("admin"), &["team/app"]).await;
    push_image_as(&srv, &admin_tok, "team/app", "v1", 1).await;

    // `docker login`: GET /v2/, then the realm with Basic credentials and no
    // scope, then GET /v2/ with the token.
    let r = call(&srv, None, Method::GET, "/v2/").await;
    let c = challenge(&r);
    let url = format!("{}?service={}", c["realm"], c["service"]);
    let r = srv
        .send(
            srv.request(Method::GET, &url)
                .basic_auth("reader", Some(password_of("reader"))),
        )
        .await
        .expect(200);
    let tok = r.json()["token"].as_str().expect("token").to_owned();
    call(&srv, Some(&tok), Method::GET, "/v2/")
        .await
        .expect(200);
    // A wrong password fails the login at the token endpoint.
    let r = srv
        .send(
            srv.request(Method::GET, &url)
                .basic_auth("reader", Some("not-the-password")),
        )
        .await;
    r.expect_error(401, "UNAUTHORIZED");

    // `docker pull`: the request, its challenge, a token for that scope.
    let r = call(&srv, None, Method::GET, "/v2/team/app/manifests/v1").await;
    let c = challenge(&r);
    let q = serde_urlencoded::to_string([("service", &c["service"]), ("scope", &c["scope"])])
        .expect("query");
    let r = srv
        .send(
            srv.request(Method::GET, &format!("{}?{q}", c["realm"]))
                .basic_auth("reader", Some(password_of("reader"))),
        )
        .await
        .expect(200);
    let tok = r.json()["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned();
    let r = call(&srv, Some(&tok), Method::GET, "/v2/team/app/manifests/v1")
        .await
        .expect(200);
    assert_eq!(r.must_header("content-type"), OCI_MANIFEST);
    // The scheme is case-insensitive.
    srv.send(
        srv.request(Method::GET, "/v2/team/app/tags/list")
            .header("authorization", format!("bearer {tok}")),
    )
    .await
    .expect(200);
}

#[tokio::test]
async fn realm_follows_the_host_header_safely() {
    let srv = start().await;
    let r = srv
        .send(
            srv.request(Method::GET, "/v2/team/app/tags/list")
                .header("host", "registry.example.test:5000"),
        )
        .await
        .expect(401);
    assert_eq!(
        challenge(&r)["realm"],
        "http://registry.example.test:5000/token"
    );
    // A Host that would break out of the quoted realm is not echoed.
    let r = srv
        .send(
            srv.request(Method::GET, "/v2/team/app/tags/list")
                .header("host", "evil.test\",scope=\"repository:x:push"),
        )
        .await
        .expect(401);
    let c = challenge(&r);
    assert!(!c["realm"].contains("evil"), "{c:?}");
    assert_eq!(c["scope"], "repository:team/app:pull", "{c:?}");
}

#[tokio::test]
async fn configured_realm_service_and_issuer_are_used() {
    let srv = start_with(|s| {
        s.auth.realm = Some("https://auth.example.test/token".into());
        s.auth.service = "my-registry".into();
        s.auth.issuer = "my-issuer".into();
    })
    .await;
    let r = call(&srv, None, Method::GET, "/v2/team/app/tags/list")
        .await
        .expect(401);
    let c = challenge(&r);
    assert_eq!(c["realm"], "https://auth.example.test/token");
    assert_eq!(c["service"], "my-registry");
    assert_eq!(c["scope"], "repository:team/app:pull");

    let pw = password_of("reader");
    let login = Some(("reader", pw.as_str()));
    let wanted = scope("team/app", "pull");
    get_token(
        &srv,
        login,
        &[("service", SERVICE), ("scope", wanted.as_str())],
    )
    .await
    .expect(400);
    let r = get_token(
        &srv,
        login,
        &[("service", "my-registry"), ("scope", wanted.as_str())],
    )
    .await
    .expect(200);
    let tok = r.json()["token"].as_str().expect("token").to_owned();
    let c = claims(&tok);
    assert_eq!(c["aud"], "my-registry");
    assert_eq!(c["iss"], "my-issuer");
    // Without a service parameter the configured one is meant.
    get_token(&srv, login, &[("scope", wanted.as_str())])
        .await
        .expect(200);
    call(&srv, Some(&tok), Method::GET, "/v2/team/app/tags/list")
        .await
        .expect_error(404, "NAME_UNKNOWN");
}

// =====================================================================================
// Tokens and scopes
// =====================================================================================

#[tokio::test]
async fn token_response_has_docker_fields_and_a_verifiable_es256_signature() {
    let srv = start().await;
    let wanted = scope("team/app", "pull,push");
    let before = now_secs();
    let r = get_token(
        &srv,
        Some(("writer", &password_of("writer"))),
        &token_params(&[&wanted]),
    )
    .await
    .expect(200);
    assert_eq!(r.must_header("cache-control"), "no-store");
    assert!(
        r.must_header("content-type")
            .starts_with("application/json"),
        "{r}"
    );
    let body = r.json();
    let tok = body["token"].as_str().expect("token");
    assert_eq!(body["access_token"], body["token"]);
    assert_eq!(body["expires_in"], 300);
    assert!(body.get("refresh_token").is_none(), "{body}");
    let issued_at = chrono::DateTime::parse_from_rfc3339(
        body["issued_at"].as_str().expect("issued_at is a string"),
    )
    .expect("issued_at is RFC 3339");
    assert!(
        (issued_at.timestamp() - before as i64).abs() <= 60,
        "{issued_at}"
    );

    let header = jwt_part(tok, 0);
    assert_eq!(header["alg"], "ES256", "{header}");
    assert!(
        header["kid"].as_str().is_some_and(|k| !k.is_empty()),
        "{header}"
    );
    let c = claims(tok);
    assert_eq!(c["iss"], ISSUER);
    assert_eq!(c["sub"], "writer");
    assert_eq!(c["aud"], SERVICE);
    let (exp, iat, nbf) = (
        c["exp"].as_u64().expect("exp"),
        c["iat"].as_u64().expect("iat"),
        c["nbf"].as_u64().expect("nbf"),
    );
    assert_eq!(exp - iat, 300);
    assert!(nbf <= now_secs() && iat + 60 >= before, "{c}");
    assert!(c["jti"].as_str().is_some_and(|j| !j.is_empty()), "{c}");
    assert_eq!(
        c["access"],
        json!([{ "type": "repository", "name": "team/app", "actions": ["pull", "push"] }])
    );

    // A standard ES256 JWT: it verifies with the public half of the key file.
    let pem = key_pem(&srv);
    let decoding = DecodingKey::from_ec_pem(public_pem(&pem).as_bytes()).expect("EC key");
    let mut v = Validation::new(Algorithm::ES256);
    v.set_audience(&[SERVICE]);
    v.set_issuer(&[ISSUER]);
    jsonwebtoken::decode::<Value>(tok, &decoding, &v).expect("the token verifies");

    // The key file is private to the server's user.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(srv.data_dir().join("token-key.pem"))
        .expect("key file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "{mode:o}");

    // Each token is new.
    let other = token(&srv, Some("writer"), &[&wanted]).await;
    assert_ne!(claims(&other)["jti"], c["jti"]);
}

#[tokio::test]
async fn scopes_are_intersected_with_grants() {
    // Several failed logins below, all from 127.0.0.1: no lockout here.
    let srv = start_with(|s| s.auth.max_failed_logins = 100).await;
    let s = |repo: &str, actions: &str| scope(repo, actions);

    // A user granted pull on team/* asking pull,push gets pull only.
    let t = token(&srv, Some("reader"), &[&s("team/app", "pull,push")]).await;
    assert_eq!(granted(&t, "team/app"), ["pull"]);
    let t = token(&srv, Some("reader"), &[&s("team/app", "pull,push,delete")]).await;
    assert_eq!(granted(&t, "team/app"), ["pull"]);
    let t = token(&srv, Some("reader"), &[&s("other/app", "pull")]).await;
    assert!(granted(&t, "other/app").is_empty(), "{}", claims(&t));
    // `team/*` is not a prefix of `teams/...`, and `*` spans slashes.
    let t = token(&srv, Some("writer"), &[&s("teams/app", "pull")]).await;
    assert!(granted(&t, "teams/app").is_empty(), "{}", claims(&t));
    let t = token(&srv, Some("writer"), &[&s("team/a/b/c", "pull,push")]).await;
    assert_eq!(granted(&t, "team/a/b/c"), ["pull", "push"]);
    // Public patterns add pull for everyone.
    let t = token(&srv, Some("reader"), &[&s("pub/x", "pull,push")]).await;
    assert_eq!(granted(&t, "pub/x"), ["pull"]);
    // `*` asks for everything.
    let t = token(&srv, Some("writer"), &[&s("team/app", "*")]).await;
    assert_eq!(granted(&t, "team/app"), ["pull", "push"]);
    let t = token(&srv, Some("deleter"), &[&s("team/app", "pull,push,delete")]).await;
    assert_eq!(granted(&t, "team/app"), ["delete", "pull"]);
    let t = token(&srv, Some("pusher"), &[&s("team/app", "pull,push")]).await;
    assert_eq!(granted(&t, "team/app"), ["push"]);

    // The admin gets everything, anywhere.
    let t = token(&srv, Some("admin"), &[&s("secret/x", "pull,push,delete")]).await;
    assert_eq!(granted(&t, "secret/x"), ["delete", "pull", "push"]);
    let t = token(&srv, Some("admin"), &[&s("any/where", "*")]).await;
    assert_eq!(granted(&t, "any/where"), ["delete", "pull", "push"]);

    // Anonymous: pull on public patterns only.
    let t = token(&srv, None, &[&s("pub/x", "pull,push,delete")]).await;
    assert_eq!(granted(&t, "pub/x"), ["pull"]);
    assert_eq!(claims(&t)["sub"], "");
    let t = token(&srv, None, &[&s("team/app", "pull")]).await;
    assert!(granted(&t, "team/app").is_empty(), "{}", claims(&t));

    // Several scopes: repeated parameters, space-separated lists, repeats
    // merged, unknown actions ignored, the plugin form accepted.
    let t = token(
        &srv,
        Some("writer"),
        &[
            &s("team/a", "pull"),
            &format!("{} {}", s("team/b", "pull,push"), s("secret/c", "pull")),
            &s("team/a", "push"),
            &s("team/d", "pull,fly"),
            "repository(plugin):team/e:pull",
        ],
    )
    .await;
    assert_eq!(granted(&t, "team/a"), ["pull", "push"]);
    assert_eq!(granted(&t, "team/b"), ["pull", "push"]);
    assert!(granted(&t, "secret/c").is_empty());
    assert_eq!(granted(&t, "team/d"), ["pull"]);
    assert_eq!(granted(&t, "team/e"), ["pull"]);
    // Same through POST, where scope is one space-separated parameter.
    let both = format!("{} {}", s("team/a", "pull,push"), s("pub/z", "pull,push"));
    let pw = password_of("reader");
    let r = post_token(
        &srv,
        &[
            ("grant_type", "password"),
            ("service", SERVICE),
            ("client_id", "docker"),
            ("username", "reader"),
            ("password", &pw),
            ("scope", &both),
        ],
    )
    .await
    .expect(200);
    let t = r.json()["access_token"].as_str().expect("token").to_owned();
    assert_eq!(granted(&t, "team/a"), ["pull"]);
    assert_eq!(granted(&t, "pub/z"), ["pull"]);

    // Bad credentials are a 401, whatever is wrong.
    let params = token_params(&[]);
    for (user, password) in [
        ("nobody", "whatever"),
        ("reader", "wrong-password"),
        ("reader", ""),
        ("admin", "Adm1n-Very-Secret-pw"),
        ("READER", &password_of("reader")),
        ("reader ", &password_of("reader")),
    ] {
        let r = get_token(&srv, Some((user, password)), &params).await;
        r.expect_error(401, "UNAUTHORIZED");
        assert!(
            r.header("www-authenticate")
                .is_some_and(|v| v.starts_with("Basic")),
            "{r}"
        );
    }

    // Grants are read when a token is issued: a revoked one is gone from
    // the next token.
    admin::revoke(&srv.catalog().await, "writer", "team/*")
        .await
        .expect("revoke");
    let t = token(&srv, Some("writer"), &[&s("team/app", "pull,push")]).await;
    assert!(granted(&t, "team/app").is_empty(), "{}", claims(&t));
}

#[tokio::test]
async fn passwords_with_colons_spaces_and_unicode_log_in() {
    let password = "p\u{e4}ss: w\u{f6}rd:with:colons ";
    let (srv, ()) = Server::start_auth(
        |_| {},
        async |cat: &Catalog| {
            admin::add_user(cat, "carol.o-k_1", password, false)
                .await
                .expect("add user");
            admin::grant(cat, "carol.o-k_1", "team/*", "pull")
                .await
                .expect("grant");
        },
    )
    .await;
    let wanted = scope("team/app", "pull");
    let r = get_token(
        &srv,
        Some(("carol.o-k_1", password)),
        &token_params(&[&wanted]),
    )
    .await
    .expect(200);
    assert_eq!(
        granted(r.json()["token"].as_str().expect("token"), "team/app"),
        ["pull"]
    );
    post_token(
        &srv,
        &[
            ("grant_type", "password"),
            ("service", SERVICE),
            ("username", "carol.o-k_1"),
            ("password", password),
            ("scope", &wanted),
        ],
    )
    .await
    .expect(200);
    // Not trimmed, not split at the last colon.
    for wrong in [password.trim_end(), "p\u{e4}ss", "with:colons "] {
        get_token(&srv, Some(("carol.o-k_1", wrong)), &token_params(&[]))
            .await
            .expect_error(401, "UNAUTHORIZED");
    }
}

// =====================================================================================
// What every endpoint requires
// =====================================================================================

/// One request, rebuilt for each token.
struct Case {
    method: Method,
    path: String,
    body: Option<(&'static str, Vec<u8>)>,
    content_range: Option<&'static str>,
    /// The challenge scope.
    scope: &'static str,
}

impl Case {
    fn new(method: Method, path: impl Into<String>, scope: &'static str) -> Case {
        Case {
            method,
            path: path.into(),
            body: None,
            content_range: None,
            scope,
        }
    }

    fn body(mut self, content_type: &'static str, body: Vec<u8>) -> Case {
        self.body = Some((content_type, body));
        self
    }

    fn range(mut self, r: &'static str) -> Case {
        self.content_range = Some(r);
        self
    }

    async fn send(&self, srv: &Server, tok: Option<&str>) -> Resp {
        let mut rb = srv.request_as(tok, self.method.clone(), &self.path);
        if let Some((ct, body)) = &self.body {
            rb = rb
                .header("content-type", *ct)
                .header("content-length", body.len())
                .body(body.clone());
        } else if matches!(self.method, Method::POST | Method::PUT | Method::PATCH) {
            rb = rb.header("content-length", "0");
        }
        if let Some(r) = self.content_range {
            rb = rb.header("content-range", r);
        }
        srv.send(rb).await
    }

    /// No token: the challenge. An anonymous token without the right: the
    /// challenge with `insufficient_scope`. Each of `denied`: 403 DENIED.
    async fn refused(&self, srv: &Server, anon: &str, denied: &[&str]) {
        let r = self.send(srv, None).await;
        expect_challenge(srv, &r, Some(self.scope), None);
        let r = self.send(srv, Some(anon)).await;
        expect_challenge(srv, &r, Some(self.scope), Some("insufficient_scope"));
        for tok in denied {
            let r = self.send(srv, Some(tok)).await;
            expect_denied(&r);
        }
    }
}

#[tokio::test]
async fn every_endpoint_enforces_its_action() {
    let srv = start().await;
    let admin_tok = token_all(&srv, Some("admin"), &["team/app"]).await;
    let img = push_image_as(&srv, &admin_tok, "team/app", "v1", 1).await;
    let spare = push_blob_as(&srv, &admin_tok, "team/app", b"a spare blob").await;

    let repo = ["team/app"];
    let reader = token_all(&srv, Some("reader"), &repo).await;
    let writer = token_all(&srv, Some("writer"), &repo).await;
    let deleter = token_all(&srv, Some("deleter"), &repo).await;
    let pusher = token_all(&srv, Some("pusher"), &repo).await;
    let anon = token_all(&srv, None, &repo).await;
    // Everything, but on other repositories: a token opens only what it names.
    let elsewhere = token_all(
        &srv,
        Some("admin"),
        &["team/other", "team/app/sub", "team/ap", "team"],
    )
    .await;
    assert_eq!(granted(&reader, "team/app"), ["pull"]);
    assert_eq!(granted(&pusher, "team/app"), ["push"]);

    let pull = "repository:team/app:pull";
    let push = "repository:team/app:pull,push";
    let delete = "repository:team/app:delete";
    let not_pull = [pusher.as_str(), elsewhere.as_str()];
    let not_push = [
        reader.as_str(),
        pusher.as_str(),
        deleter.as_str(),
        elsewhere.as_str(),
    ];
    let not_delete = [
        reader.as_str(),
        writer.as_str(),
        pusher.as_str(),
        elsewhere.as_str(),
    ];

    // ---- reads: pull
    let layer = &img.layer.digest;
    let c = Case::new(Method::GET, format!("/v2/team/app/blobs/{layer}"), pull);
    c.refused(&srv, &anon, &not_pull).await;
    let r = c.send(&srv, Some(&reader)).await.expect(200);
    assert_eq!(r.body.as_ref(), layer_bytes(1).as_slice());

    let c = Case::new(Method::HEAD, format!("/v2/team/app/blobs/{layer}"), pull);
    c.refused(&srv, &anon, &not_pull).await;
    c.send(&srv, Some(&reader)).await.expect(200);

    let c = Case::new(Method::GET, "/v2/team/app/manifests/v1", pull);
    c.refused(&srv, &anon, &not_pull).await;
    let r = c.send(&srv, Some(&reader)).await.expect(200);
    assert_eq!(r.body.as_ref(), img.manifest.as_slice());

    let c = Case::new(
        Method::HEAD,
        format!("/v2/team/app/manifests/{}", img.digest),
        pull,
    );
    c.refused(&srv, &anon, &not_pull).await;
    c.send(&srv, Some(&reader)).await.expect(200);

    let c = Case::new(Method::GET, "/v2/team/app/tags/list", pull);
    c.refused(&srv, &anon, &not_pull).await;
    let r = c.send(&srv, Some(&reader)).await.expect(200);
    assert_eq!(r.json()["tags"], json!(["v1"]));

    let c = Case::new(
        Method::GET,
        format!("/v2/team/app/referrers/{}", img.digest),
        pull,
    );
    c.refused(&srv, &anon, &not_pull).await;
    c.send(&srv, Some(&reader)).await.expect(200);

    // ---- uploads: pull and push
    let data = pattern(30, 9);
    let digest = sha256(&data);
    let c = Case::new(Method::POST, "/v2/team/app/blobs/uploads/", push);
    c.refused(&srv, &anon, &not_push).await;
    let location = c.send(&srv, Some(&writer)).await.expect(202).location();

    let c = Case::new(Method::GET, location.clone(), push);
    c.refused(&srv, &anon, &not_push).await;
    c.send(&srv, Some(&writer)).await.expect(204);

    let c = Case::new(Method::PATCH, location.clone(), push)
        .body("application/octet-stream", data[..10].to_vec())
        .range("0-9");
    c.refused(&srv, &anon, &not_push).await;
    // Had a refused PATCH written anything, this one would be out of order.
    let r = c.send(&srv, Some(&writer)).await.expect(202);
    assert_eq!(r.must_header("range"), "0-9");
    let location = r.location();

    let c = Case::new(Method::PUT, with_query(&location, "digest", &digest), push)
        .body("application/octet-stream", data[10..].to_vec())
        .range("10-29");
    c.refused(&srv, &anon, &not_push).await;
    call(
        &srv,
        Some(&admin_tok),
        Method::HEAD,
        &format!("/v2/team/app/blobs/{digest}"),
    )
    .await
    .expect(404);
    c.send(&srv, Some(&writer)).await.expect(201);
    let r = call(
        &srv,
        Some(&reader),
        Method::GET,
        &format!("/v2/team/app/blobs/{digest}"),
    )
    .await
    .expect(200);
    assert_eq!(r.body.as_ref(), data.as_slice());

    let other = pattern(40, 10);
    let c = Case::new(
        Method::POST,
        format!("/v2/team/app/blobs/uploads/?digest={}", sha256(&other)),
        push,
    )
    .body("application/octet-stream", other.clone());
    c.refused(&srv, &anon, &not_push).await;
    call(
        &srv,
        Some(&admin_tok),
        Method::HEAD,
        &format!("/v2/team/app/blobs/{}", sha256(&other)),
    )
    .await
    .expect(404);
    c.send(&srv, Some(&writer)).await.expect(201);

    let location = Case::new(Method::POST, "/v2/team/app/blobs/uploads/", push)
        .send(&srv, Some(&writer))
        .await
        .expect(202)
        .location();
    let c = Case::new(Method::DELETE, location.clone(), push);
    c.refused(&srv, &anon, &not_push).await;
    call(&srv, Some(&writer), Method::GET, &location)
        .await
        .expect(204);
    c.send(&srv, Some(&writer)).await.expect(204);
    call(&srv, Some(&writer), Method::GET, &location)
        .await
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");

    // ---- manifest PUT: push (the challenge asks pull,push, as distribution)
    let c = Case::new(Method::PUT, "/v2/team/app/manifests/v2", push)
        .body(OCI_MANIFEST, img.manifest.clone());
    c.refused(
        &srv,
        &anon,
        &[reader.as_str(), deleter.as_str(), elsewhere.as_str()],
    )
    .await;
    call(
        &srv,
        Some(&admin_tok),
        Method::GET,
        "/v2/team/app/manifests/v2",
    )
    .await
    .expect_error(404, "MANIFEST_UNKNOWN");
    c.send(&srv, Some(&writer)).await.expect(201);

    // ---- deletes: delete
    let c = Case::new(
        Method::DELETE,
        format!("/v2/team/app/blobs/{spare}"),
        delete,
    );
    c.refused(&srv, &anon, &not_delete).await;
    call(
        &srv,
        Some(&reader),
        Method::HEAD,
        &format!("/v2/team/app/blobs/{spare}"),
    )
    .await
    .expect(200);
    c.send(&srv, Some(&deleter)).await.expect(202);
    call(
        &srv,
        Some(&reader),
        Method::HEAD,
        &format!("/v2/team/app/blobs/{spare}"),
    )
    .await
    .expect(404);

    let c = Case::new(
        Method::DELETE,
        format!("/v2/team/app/manifests/{}", img.digest),
        delete,
    );
    c.refused(&srv, &anon, &not_delete).await;
    call(
        &srv,
        Some(&reader),
        Method::GET,
        "/v2/team/app/manifests/v1",
    )
    .await
    .expect(200);
    c.send(&srv, Some(&deleter)).await.expect(202);
    call(
        &srv,
        Some(&reader),
        Method::GET,
        "/v2/team/app/manifests/v1",
    )
    .await
    .expect_error(404, "MANIFEST_UNKNOWN");
}

#[tokio::test]
async fn a_pull_only_user_pushing_leaves_nothing_behind() {
    let srv = start().await;
    let admin_tok = token_all(&srv, Some("admin"), &["team/app", "team/seed"]).await;
    push_image_as(&srv, &admin_tok, "team/seed", "v1", 2).await;
    let tok = token(&srv, Some("reader"), &[&scope("team/app", "pull,push")]).await;
    assert_eq!(granted(&tok, "team/app"), ["pull"]);

    let config = to_bytes(&json!({ "architecture": "amd64", "os": "linux" }));
    let layer = pattern(1000, 3);
    let (config_d, layer_d) = (Desc::of(OCI_CONFIG, &config), Desc::of(OCI_LAYER, &layer));
    let manifest = to_bytes(&image_manifest(
        OCI_MANIFEST,
        &config_d,
        std::slice::from_ref(&layer_d),
    ));

    let r = call(
        &srv,
        Some(&tok),
        Method::POST,
        "/v2/team/app/blobs/uploads/",
    )
    .await;
    expect_denied(&r);
    for data in [&config, &layer] {
        let r = call_with_body(
            &srv,
            Some(&tok),
            Method::POST,
            &format!("/v2/team/app/blobs/uploads/?digest={}", sha256(data)),
            "application/octet-stream",
            data.clone(),
        )
        .await;
        expect_denied(&r);
    }
    // A mount from a repository the reader may pull is still a push.
    let seed_layer = sha256(&layer_bytes(2));
    let r = call(
        &srv,
        Some(&tok),
        Method::POST,
        &format!("/v2/team/app/blobs/uploads/?mount={seed_layer}&from=team/seed"),
    )
    .await;
    expect_denied(&r);
    let r = put_manifest_as(&srv, Some(&tok), "team/app", "v1", &manifest).await;
    expect_denied(&r);
    let r = call(
        &srv,
        Some(&tok),
        Method::DELETE,
        "/v2/team/seed/manifests/v1",
    )
    .await;
    expect_denied(&r);

    // Nothing reached the repository.
    for d in [&config_d.digest, &layer_d.digest, &seed_layer] {
        call(
            &srv,
            Some(&admin_tok),
            Method::HEAD,
            &format!("/v2/team/app/blobs/{d}"),
        )
        .await
        .expect(404);
    }
    call(
        &srv,
        Some(&admin_tok),
        Method::GET,
        "/v2/team/app/manifests/v1",
    )
    .await
    .expect(404);
    call(
        &srv,
        Some(&admin_tok),
        Method::GET,
        "/v2/team/app/tags/list",
    )
    .await
    .expect_error(404, "NAME_UNKNOWN");
    let cat_tok = token(&srv, Some("admin"), &["registry:catalog:*"]).await;
    assert_eq!(catalog_as(&srv, &cat_tok, None).await, ["team/seed"]);
    call(
        &srv,
        Some(&admin_tok),
        Method::GET,
        "/v2/team/seed/manifests/v1",
    )
    .await
    .expect(200);
}

#[tokio::test]
async fn cross_mount_requires_pull_on_the_source() {
    let srv = start().await;
    let admin_tok = token_all(&srv, Some("admin"), &["secret/src", "team/src", "team/app"]).await;
    let private = pattern(500, 20);
    let d_private = push_blob_as(&srv, &admin_tok, "secret/src", &private).await;
    let shared = pattern(600, 21);
    let d_shared = push_blob_as(&srv, &admin_tok, "team/src", &shared).await;
    push_blob_as(&srv, &admin_tok, "secret/src", &shared).await;

    let writer = token(
        &srv,
        Some("writer"),
        &[
            &scope("team/app", "pull,push"),
            &scope("secret/src", "pull"),
            &scope("team/src", "pull"),
        ],
    )
    .await;
    assert!(granted(&writer, "secret/src").is_empty());
    let blob_in_app = |d: &str| format!("/v2/team/app/blobs/{d}");

    // Mounting from a repository the caller cannot pull does not succeed.
    let mount = format!("/v2/team/app/blobs/uploads/?mount={d_private}&from=secret/src");
    let r = call(&srv, Some(&writer), Method::POST, &mount).await;
    assert_ne!(r.status, 201, "mounted a blob it cannot pull: {r}");
    expect_denied(&r);
    let r = call(&srv, None, Method::POST, &mount).await;
    expect_challenge(
        &srv,
        &r,
        Some("repository:team/app:pull,push repository:secret/src:pull"),
        None,
    );
    // Nor with a token naming only the destination.
    let dst_only = token(&srv, Some("writer"), &[&scope("team/app", "pull,push")]).await;
    let r = call(&srv, Some(&dst_only), Method::POST, &mount).await;
    expect_denied(&r);
    call(
        &srv,
        Some(&admin_tok),
        Method::HEAD,
        &blob_in_app(&d_private),
    )
    .await
    .expect(404);

    // Without `from`, a blob held only where the caller cannot pull is not
    // mounted either: a plain upload session is opened instead.
    let r = call(
        &srv,
        Some(&writer),
        Method::POST,
        &format!("/v2/team/app/blobs/uploads/?mount={d_private}"),
    )
    .await;
    assert_eq!(r.status, 202, "mount without from: {r}");
    assert!(r.location().contains("/v2/team/app/blobs/uploads/"), "{r}");
    call(
        &srv,
        Some(&admin_tok),
        Method::HEAD,
        &blob_in_app(&d_private),
    )
    .await
    .expect(404);

    // From a repository the caller may pull: mounted.
    let r = call(
        &srv,
        Some(&writer),
        Method::POST,
        &format!("/v2/team/app/blobs/uploads/?mount={d_shared}&from=team/src"),
    )
    .await
    .expect(201);
    assert_eq!(r.must_header("docker-content-digest"), d_shared);
    let got = call(&srv, Some(&writer), Method::GET, &blob_in_app(&d_shared))
        .await
        .expect(200);
    assert_eq!(got.body.as_ref(), shared.as_slice());

    // Without `from`, a blob the caller may pull somewhere is mounted.
    let third = pattern(700, 22);
    let d_third = push_blob_as(&srv, &admin_tok, "team/src", &third).await;
    call(
        &srv,
        Some(&writer),
        Method::POST,
        &format!("/v2/team/app/blobs/uploads/?mount={d_third}"),
    )
    .await
    .expect(201);
}

// =====================================================================================
// Catalog
// =====================================================================================

#[tokio::test]
async fn catalog_lists_only_repositories_the_caller_may_pull() {
    let srv = start().await;
    let all = ["other", "pub/x", "secret/y", "team/a", "team/b"];
    let admin_tok = token_all(&srv, Some("admin"), &all).await;
    for (i, repo) in all.iter().enumerate() {
        push_image_as(&srv, &admin_tok, repo, "v1", 30 + i as u8).await;
    }
    let cat = "registry:catalog:*";

    let r = call(&srv, None, Method::GET, "/v2/_catalog").await;
    expect_challenge(&srv, &r, Some(cat), None);

    let admin_cat = token(&srv, Some("admin"), &[cat]).await;
    assert_eq!(catalog_as(&srv, &admin_cat, None).await, all);

    let reader_cat = token(&srv, Some("reader"), &[cat]).await;
    assert_eq!(
        claims(&reader_cat)["access"],
        json!([{ "type": "registry", "name": "catalog", "actions": ["*"] }])
    );
    let mine = ["pub/x", "team/a", "team/b"];
    assert_eq!(catalog_as(&srv, &reader_cat, None).await, mine);
    // Page by page, the same: filtering does not end the listing early.
    for n in [1, 2] {
        assert_eq!(catalog_as(&srv, &reader_cat, Some(n)).await, mine, "n={n}");
    }
    let r = call(
        &srv,
        Some(&reader_cat),
        Method::GET,
        "/v2/_catalog?last=pub/x",
    )
    .await
    .expect(200);
    assert_eq!(r.json()["repositories"], json!(["team/a", "team/b"]));

    let anon_cat = token(&srv, None, &[cat]).await;
    assert_eq!(catalog_as(&srv, &anon_cat, None).await, ["pub/x"]);
    assert_eq!(catalog_as(&srv, &anon_cat, Some(1)).await, ["pub/x"]);

    // A token without the catalog scope.
    let reader_repo = token(&srv, Some("reader"), &[&scope("team/a", "pull")]).await;
    let r = call(&srv, Some(&reader_repo), Method::GET, "/v2/_catalog").await;
    expect_denied(&r);
    let anon_repo = token(&srv, None, &[&scope("pub/x", "pull")]).await;
    let r = call(&srv, Some(&anon_repo), Method::GET, "/v2/_catalog").await;
    expect_challenge(&srv, &r, Some(cat), Some("insufficient_scope"));

    // A new grant shows up.
    admin::grant(&srv.catalog().await, "reader", "secret/*", "pull")
        .await
        .expect("grant");
    let reader_cat = token(&srv, Some("reader"), &[cat]).await;
    assert_eq!(
        catalog_as(&srv, &reader_cat, None).await,
        ["pub/x", "secret/y", "team/a", "team/b"]
    );
}

// =====================================================================================
// Forged, expired and malformed credentials
// =====================================================================================

#[tokio::test]
async fn forged_tokens_are_refused() {
    let srv = start().await;
    let admin_tok = token_all(&srv, Some("admin"), &["team/app"]).await;
    push_image_as(&srv, &admin_tok, "team/app", "v1", 4).await;
    let path = "/v2/team/app/tags/list";
    let pem = key_pem(&srv);
    let kid = jwt_part(&admin_tok, 0)["kid"].as_str().map(str::to_owned);
    let now = now_secs();

    // The control: the server's own key and claims shaped as it makes them
    // are accepted, so each refusal below is for the one thing changed.
    let good = forged_claims("someone", "team/app");
    let control = sign_es256(&pem, kid.clone(), &good);
    call(&srv, Some(&control), Method::GET, path)
        .await
        .expect(200);
    // Within the leeway (60 s by default) past `exp`: still accepted.
    let mut c = good.clone();
    c["exp"] = json!(now - 30);
    c["nbf"] = json!(now - 330);
    c["iat"] = json!(now - 330);
    call(
        &srv,
        Some(&sign_es256(&pem, kid.clone(), &c)),
        Method::GET,
        path,
    )
    .await
    .expect(200);

    let mut forged: Vec<(&str, String)> = Vec::new();
    // alg none, with no signature or with a real token's.
    let none = json!({ "alg": "none", "typ": "JWT" });
    forged.push(("alg none", unsigned_jwt(&none, &good, "")));
    let real_sig = admin_tok.rsplit('.').next().expect("signature").to_owned();
    forged.push((
        "alg none + signature",
        unsigned_jwt(&none, &good, &real_sig),
    ));
    // HS256 keyed with the public key (algorithm confusion), PEM and DER.
    let public = public_pem(&pem);
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = kid.clone();
    forged.push((
        "HS256 with the public key PEM",
        jsonwebtoken::encode(&hs, &good, &EncodingKey::from_secret(public.as_bytes()))
            .expect("sign"),
    ));
    let public_der = p256::SecretKey::from_pkcs8_pem(&pem)
        .expect("key")
        .public_key()
        .to_public_key_der()
        .expect("DER");
    forged.push((
        "HS256 with the public key DER",
        jsonwebtoken::encode(&hs, &good, &EncodingKey::from_secret(public_der.as_bytes()))
            .expect("sign"),
    ));
    forged.push((
        "HS256 with arbitrary bytes",
        jsonwebtoken::encode(&hs, &good, &EncodingKey::from_secret(b"secret")).expect("sign"),
    ));
    // Another ES256 key, claiming the real key's id.
    let other = p256::SecretKey::random(&mut rand_core::OsRng)
        .to_pkcs8_pem(LineEnding::LF)
        .expect("PEM")
        .to_string();
    forged.push(("another ES256 key", sign_es256(&other, kid.clone(), &good)));
    // The real key, wrong claims.
    let edits: Vec<(&str, &str, Value)> = vec![
        ("wrong audience", "aud", json!("other-registry")),
        (
            "refresh audience",
            "aud",
            json!(format!("{SERVICE}#refresh")),
        ),
        ("wrong issuer", "iss", json!("someone-else")),
        ("expired past the leeway", "exp", json!(now - 120)),
        ("not yet valid", "nbf", json!(now + 3600)),
    ];
    for (what, key, value) in edits {
        let mut c = good.clone();
        c[key] = value;
        forged.push((what, sign_es256(&pem, kid.clone(), &c)));
    }
    for missing in ["sub", "exp", "aud", "iss"] {
        let mut c = good.clone();
        c.as_object_mut().expect("object").remove(missing);
        let what = match missing {
            "sub" => "no sub",
            "exp" => "no exp",
            "aud" => "no aud",
            _ => "no iss",
        };
        forged.push((what, sign_es256(&pem, kid.clone(), &c)));
    }
    // A real token with its payload changed, or its signature cut.
    let reader = token(&srv, Some("reader"), &[&scope("team/app", "pull")]).await;
    let parts: Vec<&str> = reader.split('.').collect();
    let mut c = claims(&reader);
    c["access"] = good["access"].clone();
    forged.push((
        "tampered payload",
        format!(
            "{}.{}.{}",
            parts[0],
            b64url().encode(serde_json::to_vec(&c).expect("JSON")),
            parts[2]
        ),
    ));
    forged.push((
        "cut signature",
        format!(
            "{}.{}.{}",
            parts[0],
            parts[1],
            &parts[2][..parts[2].len() / 2]
        ),
    ));
    forged.push(("no signature", format!("{}.{}.", parts[0], parts[1])));
    // Control for the tampering: the genuine reader token pulls.
    call(&srv, Some(&reader), Method::GET, path)
        .await
        .expect(200);

    for (what, tok) in &forged {
        let r = call(&srv, Some(tok), Method::GET, path).await;
        assert_eq!(r.status, 401, "{what}: {r}");
        expect_challenge(
            &srv,
            &r,
            Some("repository:team/app:pull"),
            Some("invalid_token"),
        );
        // Nor do they let anyone write.
        let r = call(&srv, Some(tok), Method::POST, "/v2/team/app/blobs/uploads/").await;
        assert_eq!(r.status, 401, "{what}: {r}");
    }
}

#[tokio::test]
async fn expired_tokens_are_refused() {
    let srv = start_with(|s| {
        s.auth.token_ttl_secs = 1;
        s.auth.leeway_secs = 0;
    })
    .await;
    let wanted = scope("team/app", "pull");
    let r = get_token(
        &srv,
        Some(("reader", &password_of("reader"))),
        &token_params(&[&wanted]),
    )
    .await
    .expect(200);
    assert_eq!(r.json()["expires_in"], 1);
    let tok = r.json()["token"].as_str().expect("token").to_owned();
    call(&srv, Some(&tok), Method::GET, "/v2/team/app/tags/list")
        .await
        .expect_error(404, "NAME_UNKNOWN");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = call(&srv, Some(&tok), Method::GET, "/v2/team/app/tags/list").await;
    expect_challenge(
        &srv,
        &r,
        Some("repository:team/app:pull"),
        Some("invalid_token"),
    );
    call(&srv, Some(&tok), Method::GET, "/v2/")
        .await
        .expect(401);
}

#[tokio::test]
async fn malformed_authorization_headers_are_refused_without_5xx() {
    let srv = start_with(|s| s.auth.max_failed_logins = 1000).await;
    let good = token(&srv, Some("reader"), &[&scope("team/app", "pull")]).await;
    let huge = "a".repeat(20 * 1024);
    let values: Vec<(String, HeaderValue)> = [
        "abc".to_owned(),
        "Bearer".to_owned(),
        "Bearer ".to_owned(),
        "Bearer a.b.c".to_owned(),
        "Bearer x y z".to_owned(),
        format!("Bearer {good}x"),
        format!("Bearer {good}.{good}"),
        format!("Bearer {huge}"),
        format!("Bearer {huge}.{huge}.{huge}"),
        "Basic !!!not-base64!!!".to_owned(),
        basic("reader", &password_of("reader")),
        "Digest username=\"reader\"".to_owned(),
        format!("Token {good}"),
        good.clone(),
    ]
    .into_iter()
    .map(|v| {
        let shown = v.chars().take(40).collect::<String>();
        (shown, HeaderValue::from_str(&v).expect("header value"))
    })
    .chain(std::iter::once((
        "non-UTF-8".to_owned(),
        HeaderValue::from_bytes(b"Bearer \xff\xfe\xfd").expect("header value"),
    )))
    .collect();

    for path in ["/v2/", "/v2/team/app/tags/list"] {
        for (shown, value) in &values {
            let r = call_with_authorization(&srv, path, value.clone()).await;
            assert_eq!(r.status, 401, "{path} with {shown:?}: {r}");
            assert!(
                r.must_header("www-authenticate").starts_with("Bearer "),
                "{r}"
            );
            r.expect_error(401, "UNAUTHORIZED");
        }
    }
    // The same header values at the token endpoint: never a 5xx, never a
    // token.
    let mut token_values = values.clone();
    token_values.extend(
        [
            "Basic".to_owned(),
            "Basic ".to_owned(),
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode("no-colon")
            ),
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(b"\xff\xfe:\xfd")
            ),
            basic(&huge, "x"),
            basic("reader", &huge),
        ]
        .into_iter()
        .map(|v| {
            let shown = v.chars().take(40).collect::<String>();
            (shown, HeaderValue::from_str(&v).expect("header value"))
        }),
    );
    for (shown, value) in &token_values {
        if value.as_bytes() == basic("reader", &password_of("reader")).as_bytes() {
            continue;
        }
        let r = call_with_authorization(&srv, "/token?service=wharf-registry", value.clone()).await;
        assert!(
            matches!(r.status.as_u16(), 400 | 401),
            "/token with {shown:?}: {r}"
        );
        assert!(!r.error_codes().is_empty(), "/token with {shown:?}: {r}");
    }
    // The good token still works after all that.
    call(&srv, Some(&good), Method::GET, "/v2/team/app/tags/list")
        .await
        .expect(404);
}

// =====================================================================================
// The token endpoint
// =====================================================================================

#[tokio::test]
async fn token_endpoint_rejects_bad_requests() {
    let srv = start().await;
    let pw = password_of("writer");
    let login = Some(("writer", pw.as_str()));
    let good = scope("team/app", "pull");

    // Unknown service.
    for login in [None, login] {
        let r = get_token(&srv, login, &[("service", "other"), ("scope", &good)]).await;
        assert_eq!(r.status, 400, "{r}");
        assert!(!r.error_codes().is_empty(), "{r}");
    }
    // Malformed scopes, repository names above all.
    for bad in [
        "repository:Team/App:pull",
        "repository:../etc:pull",
        "repository:team//app:pull",
        "repository:team/app/:pull",
        "repository::pull",
        "repository:team/app",
        "repository",
        &format!("repository:{}:pull", "a".repeat(300)),
    ] {
        let r = get_token(&srv, login, &[("service", SERVICE), ("scope", bad)]).await;
        assert_eq!(r.status, 400, "scope {bad:?}: {r}");
        assert!(!r.error_codes().is_empty(), "{r}");
        let r = post_token(
            &srv,
            &[
                ("grant_type", "password"),
                ("service", SERVICE),
                ("username", "writer"),
                ("password", &pw),
                ("scope", bad),
            ],
        )
        .await;
        assert_eq!(r.status, 400, "POST scope {bad:?}: {r}");
    }
    let r = get_token(
        &srv,
        login,
        &[("service", SERVICE), ("scope", "repository:Team/App:pull")],
    )
    .await;
    r.expect_error(400, "NAME_INVALID");

    // POST: unknown service, malformed forms, missing fields, other grants.
    let r = post_token(
        &srv,
        &[
            ("grant_type", "password"),
            ("service", "other"),
            ("username", "writer"),
            ("password", &pw),
        ],
    )
    .await;
    assert_eq!(r.status, 400, "{r}");
    for body in [
        b"\xff\xfe\x00%%%&&==".to_vec(),
        b"{\"grant_type\":\"password\",\"username\":\"writer\"}".to_vec(),
        Vec::new(),
        vec![b'a'; 70 * 1024],
        format!(
            "grant_type=password&username=writer&password={pw}&pad={}",
            "x".repeat(70 * 1024)
        )
        .into_bytes(),
    ] {
        let r = post_token_raw(&srv, body.clone()).await;
        assert_eq!(
            r.status,
            400,
            "body {:?}: {r}",
            String::from_utf8_lossy(&body[..body.len().min(60)])
        );
    }
    for form in [
        vec![("grant_type", "password"), ("username", "writer")],
        vec![("grant_type", "password"), ("password", pw.as_str())],
        vec![("grant_type", "refresh_token")],
        vec![("grant_type", "client_credentials"), ("client_id", "x")],
        vec![("grant_type", "authorization_code"), ("code", "x")],
        vec![
            ("grant_type", ""),
            ("username", "writer"),
            ("password", pw.as_str()),
        ],
        vec![("username", "writer"), ("password", pw.as_str())],
    ] {
        let r = post_token(&srv, &form).await;
        assert_eq!(r.status, 400, "{form:?}: {r}");
        assert!(!r.error_codes().is_empty(), "{r}");
    }
    // Other methods.
    for m in [Method::PUT, Method::DELETE, Method::PATCH] {
        call(&srv, None, m, "/token").await.expect(405);
    }
    // And a good request, for comparison.
    post_token(
        &srv,
        &[
            ("grant_type", "password"),
            ("service", SERVICE),
            ("client_id", "docker"),
            ("username", "writer"),
            ("password", &pw),
            ("scope", &good),
        ],
    )
    .await
    .expect(200);
}

#[tokio::test]
async fn with_auth_off_there_is_no_token_endpoint_and_no_token_needed() {
    let srv = Server::start().await;
    call(&srv, None, Method::GET, "/token?service=wharf-registry")
        .await
        .expect(404);
    post_token(&srv, &[("grant_type", "password")])
        .await
        .expect(404);
    srv.get("/v2/").await.expect(200);
    srv.push_image("team/app", "v1", 5).await;
    srv.get("/v2/team/app/manifests/v1").await.expect(200);
}

#[tokio::test]
async fn refresh_tokens_work_until_the_password_changes() {
    let srv = start().await;
    let pw = password_of("writer");
    let wanted = scope("team/app", "pull,push");

    // `docker login`: the OAuth2 password grant, offline.
    let r = post_token(
        &srv,
        &[
            ("grant_type", "password"),
            ("service", SERVICE),
            ("client_id", "docker"),
            ("access_type", "offline"),
            ("username", "writer"),
            ("password", &pw),
        ],
    )
    .await
    .expect(200);
    let body = r.json();
    let refresh = body["refresh_token"]
        .as_str()
        .expect("a refresh_token")
        .to_owned();
    assert_ne!(refresh, body["token"].as_str().expect("token"));
    let access = body["token"].as_str().expect("token").to_owned();
    // Online: no refresh token.
    let r = post_token(
        &srv,
        &[
            ("grant_type", "password"),
            ("service", SERVICE),
            ("username", "writer"),
            ("password", &pw),
        ],
    )
    .await
    .expect(200);
    assert!(r.json().get("refresh_token").is_none(), "{r}");
    // GET with offline_token=true gives one too.
    let r = get_token(
        &srv,
        Some(("writer", &pw)),
        &[("service", SERVICE), ("offline_token", "true")],
    )
    .await
    .expect(200);
    assert!(r.json()["refresh_token"].is_string(), "{r}");
    // Anonymous: nobody to refresh.
    let r = get_token(
        &srv,
        None,
        &[("service", SERVICE), ("offline_token", "true")],
    )
    .await
    .expect(200);
    assert!(r.json().get("refresh_token").is_none(), "{r}");

    // The refresh grant: a new access token, scoped like any other.
    let refreshed = |refresh: String| {
        let srv = &srv;
        let wanted = wanted.clone();
        async move {
            post_token(
                srv,
                &[
                    ("grant_type", "refresh_token"),
                    ("service", SERVICE),
                    ("client_id", "docker"),
                    ("refresh_token", &refresh),
                    ("scope", &wanted),
                ],
            )
            .await
        }
    };
    let r = refreshed(refresh.clone()).await.expect(200);
    let tok = r.json()["token"].as_str().expect("token").to_owned();
    assert_eq!(claims(&tok)["sub"], "writer");
    assert_eq!(granted(&tok, "team/app"), ["pull", "push"]);
    push_blob_as(&srv, &tok, "team/app", b"pushed after a refresh").await;

    // A refresh token is not an access token, nor the reverse.
    let r = call(&srv, Some(&refresh), Method::GET, "/v2/").await;
    expect_challenge(&srv, &r, None, Some("invalid_token"));
    let r = call(&srv, Some(&refresh), Method::GET, "/v2/team/app/tags/list").await;
    assert_eq!(r.status, 401, "{r}");
    refreshed(access.clone())
        .await
        .expect_error(401, "UNAUTHORIZED");
    refreshed("garbage".into())
        .await
        .expect_error(401, "UNAUTHORIZED");
    // Forged with another key.
    let other = p256::SecretKey::random(&mut rand_core::OsRng)
        .to_pkcs8_pem(LineEnding::LF)
        .expect("PEM")
        .to_string();
    let mut c = claims(&refresh);
    c["exp"] = json!(now_secs() + 3600);
    refreshed(sign_es256(&other, None, &c))
        .await
        .expect_error(401, "UNAUTHORIZED");

    // A password change revokes the refresh token.
    admin::set_password(&srv.catalog().await, "writer", "a-brand-new-password")
        .await
        .expect("set the password");
    refreshed(refresh.clone())
        .await
        .expect_error(401, "UNAUTHORIZED");
    get_token(&srv, Some(("writer", &pw)), &token_params(&[]))
        .await
        .expect_error(401, "UNAUTHORIZED");
    let r = post_token(
        &srv,
        &[
            ("grant_type", "password"),
            ("service", SERVICE),
            ("access_type", "offline"),
            ("username", "writer"),
            ("password", "a-brand-new-password"),
        ],
    )
    .await
    .expect(200);
    let refresh2 = r.json()["refresh_token"]
        .as_str()
        .expect("refresh_token")
        .to_owned();
    refreshed(refresh2.clone()).await.expect(200);

    // Removing the user revokes it too.
    admin::remove_user(&srv.catalog().await, "writer")
        .await
        .expect("remove the user");
    refreshed(refresh2).await.expect_error(401, "UNAUTHORIZED");
}

// =====================================================================================
// Failed logins
// =====================================================================================

#[tokio::test]
async fn failed_logins_are_rate_limited() {
    let srv = start_with(|s| {
        s.auth.max_failed_logins = 3;
        s.auth.failed_login_window_secs = 60;
    })
    .await;
    let pw = password_of("writer");
    let params = token_params(&[]);
    let anon_before = token(&srv, None, &[&scope("pub/x", "pull")]).await;

    // Three failures, through GET and POST: each a plain 401.
    for wrong in ["wrong-1", "wrong-2"] {
        get_token(&srv, Some(("writer", wrong)), &params)
            .await
            .expect_error(401, "UNAUTHORIZED");
    }
    post_token(
        &srv,
        &[
            ("grant_type", "password"),
            ("username", "writer"),
            ("password", "wrong-3"),
        ],
    )
    .await
    .expect_error(401, "UNAUTHORIZED");

    // Then 429 with Retry-After, even for the right password.
    let check_429 = |r: &Resp| {
        r.expect_error(429, "TOOMANYREQUESTS");
        let after: u64 = r
            .must_header("retry-after")
            .parse()
            .unwrap_or_else(|_| panic!("Retry-After is not seconds: {r}"));
        assert!((1..=60).contains(&after), "Retry-After {after}: {r}");
    };
    check_429(&get_token(&srv, Some(("writer", &pw)), &params).await);
    check_429(&get_token(&srv, Some(("writer", "wrong-4")), &params).await);
    check_429(
        &post_token(
            &srv,
            &[
                ("grant_type", "password"),
                ("service", SERVICE),
                ("username", "writer"),
                ("password", &pw),
            ],
        )
        .await,
    );
    // The client address is limited too (every request here comes from
    // 127.0.0.1): another user's right password as well.
    check_429(&get_token(&srv, Some(("reader", &password_of("reader"))), &params).await);
    // Requests that log nobody in are not limited, and tokens already
    // issued keep working.
    token(&srv, None, &[&scope("pub/x", "pull")]).await;
    call(&srv, Some(&anon_before), Method::GET, "/v2/")
        .await
        .expect(200);
}

#[tokio::test]
async fn a_lockout_ends_with_its_window() {
    let srv = start_with(|s| {
        s.auth.max_failed_logins = 2;
        s.auth.failed_login_window_secs = 4;
    })
    .await;
    let pw = password_of("reader");
    let params = token_params(&[]);
    for wrong in ["nope-1", "nope-2"] {
        get_token(&srv, Some(("reader", wrong)), &params)
            .await
            .expect(401);
    }
    let r = get_token(&srv, Some(("reader", &pw)), &params).await;
    r.expect_error(429, "TOOMANYREQUESTS");
    let after: u64 = r.must_header("retry-after").parse().expect("seconds");
    assert!((1..=4).contains(&after), "Retry-After {after}");
    // A client that waits what Retry-After says is let in.
    tokio::time::sleep(Duration::from_secs(after) + Duration::from_millis(250)).await;
    let r = get_token(&srv, Some(("reader", &pw)), &params).await;
    assert_eq!(
        r.status, 200,
        "waited Retry-After ({after} s) + 250 ms and was still refused (Retry-After must \
         not be rounded down): {r}"
    );
    // The lockout does end.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    get_token(&srv, Some(("reader", &pw)), &params)
        .await
        .expect(200);
}

#[tokio::test]
async fn passwords_never_appear_in_responses() {
    let srv = start_with(|s| s.auth.max_failed_logins = 3).await;
    let right = password_of("writer");
    let wrong = "Wr0ng-Guess-Password-xyz";
    let mut seen: Vec<Resp> = Vec::new();

    seen.push(get_token(&srv, Some(("writer", &right)), &token_params(&[])).await);
    seen.push(
        post_token(
            &srv,
            &[
                ("grant_type", "password"),
                ("service", SERVICE),
                ("access_type", "offline"),
                ("username", "writer"),
                ("password", &right),
            ],
        )
        .await,
    );
    // Basic credentials sent to /v2/ itself.
    seen.push(
        call_with_authorization(
            &srv,
            "/v2/",
            HeaderValue::from_str(&basic("writer", &right)).expect("value"),
        )
        .await,
    );
    seen.push(get_token(&srv, Some(("writer", wrong)), &token_params(&[])).await);
    seen.push(get_token(&srv, Some((wrong, right.as_str())), &token_params(&[])).await);
    seen.push(
        post_token(
            &srv,
            &[
                ("grant_type", "password"),
                ("username", "writer"),
                ("password", wrong),
            ],
        )
        .await,
    );
    // Locked out now.
    seen.push(get_token(&srv, Some(("writer", &right)), &token_params(&[])).await);
    seen.push(get_token(&srv, Some(("writer", wrong)), &token_params(&[])).await);
    let statuses: Vec<u16> = seen.iter().map(|r| r.status.as_u16()).collect();
    assert_eq!(statuses, [200, 200, 401, 401, 401, 401, 429, 429]);

    for r in &seen {
        let mut texts = vec![String::from_utf8_lossy(&r.body).into_owned()];
        texts.extend(
            r.headers
                .values()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()),
        );
        // Tokens are base64: read their claims too.
        if let Ok(body) = serde_json::from_slice::<Value>(&r.body) {
            for key in ["token", "access_token", "refresh_token"] {
                if let Some(t) = body[key].as_str() {
                    texts.push(jwt_part(t, 0).to_string());
                    texts.push(claims(t).to_string());
                }
            }
        }
        for text in &texts {
            for secret in [right.as_str(), wrong, "$argon2"] {
                assert!(
                    !text.contains(secret),
                    "{}: {secret:?} appears in {text:?}",
                    r.what
                );
            }
        }
    }
}

// =====================================================================================
// Robots, anonymous access
// =====================================================================================

#[tokio::test]
async fn robots_pull_their_patterns_and_cannot_push() {
    let (srv, secret) = Server::start_auth(
        |_| {},
        async |cat: &Catalog| {
            setup_users(cat).await;
            admin::add_robot(cat, "ci-bot", &["team/*".to_owned()])
                .await
                .expect("add the robot")
        },
    )
    .await;
    assert!(secret.len() >= 32, "a short secret: {secret:?}");
    let admin_tok = token_all(&srv, Some("admin"), &["team/app", "secret/x"]).await;
    let img = push_image_as(&srv, &admin_tok, "team/app", "v1", 6).await;
    push_image_as(&srv, &admin_tok, "secret/x", "v1", 7).await;

    let r = get_token(
        &srv,
        Some(("ci-bot", &secret)),
        &token_params(&[
            &scope("team/app", "pull,push,delete"),
            &scope("secret/x", "pull"),
            "registry:catalog:*",
        ]),
    )
    .await
    .expect(200);
    let tok = r.json()["token"].as_str().expect("token").to_owned();
    assert_eq!(claims(&tok)["sub"], "ci-bot");
    assert_eq!(granted(&tok, "team/app"), ["pull"]);
    assert!(granted(&tok, "secret/x").is_empty());

    let r = call(&srv, Some(&tok), Method::GET, "/v2/team/app/manifests/v1")
        .await
        .expect(200);
    assert_eq!(r.body.as_ref(), img.manifest.as_slice());
    call(
        &srv,
        Some(&tok),
        Method::GET,
        &format!("/v2/team/app/blobs/{}", img.layer.digest),
    )
    .await
    .expect(200);
    expect_denied(&call(&srv, Some(&tok), Method::GET, "/v2/secret/x/manifests/v1").await);
    expect_denied(
        &call(
            &srv,
            Some(&tok),
            Method::POST,
            "/v2/team/app/blobs/uploads/",
        )
        .await,
    );
    expect_denied(&put_manifest_as(&srv, Some(&tok), "team/app", "v2", &img.manifest).await);
    expect_denied(
        &call(
            &srv,
            Some(&tok),
            Method::DELETE,
            &format!("/v2/team/app/manifests/{}", img.digest),
        )
        .await,
    );
    assert_eq!(catalog_as(&srv, &tok, None).await, ["team/app"]);

    // `docker login` with the robot's secret; a wrong secret fails.
    post_token(
        &srv,
        &[
            ("grant_type", "password"),
            ("service", SERVICE),
            ("username", "ci-bot"),
            ("password", &secret),
        ],
    )
    .await
    .expect(200);
    get_token(&srv, Some(("ci-bot", "not-the-secret")), &token_params(&[]))
        .await
        .expect_error(401, "UNAUTHORIZED");
    // A robot's name is taken like a user's.
    let cat = srv.catalog().await;
    assert!(admin::add_robot(&cat, "ci-bot", &[]).await.is_err());
    assert!(admin::add_robot(&cat, "reader", &[]).await.is_err());
}

#[tokio::test]
async fn anonymous_pulls_public_repositories_only() {
    let srv = start().await;
    let admin_tok = token_all(&srv, Some("admin"), &["pub/tools", "team/app"]).await;
    let img = push_image_as(&srv, &admin_tok, "pub/tools", "v1", 8).await;
    push_image_as(&srv, &admin_tok, "team/app", "v1", 9).await;

    let anon = token(&srv, None, &[&scope("pub/tools", "pull,push")]).await;
    assert_eq!(granted(&anon, "pub/tools"), ["pull"]);
    let r = call(&srv, Some(&anon), Method::GET, "/v2/pub/tools/manifests/v1")
        .await
        .expect(200);
    assert_eq!(r.body.as_ref(), img.manifest.as_slice());
    call(
        &srv,
        Some(&anon),
        Method::GET,
        &format!("/v2/pub/tools/blobs/{}", img.layer.digest),
    )
    .await
    .expect(200);
    call(&srv, Some(&anon), Method::GET, "/v2/pub/tools/tags/list")
        .await
        .expect(200);
    // Pushing asks for credentials.
    let r = call(
        &srv,
        Some(&anon),
        Method::POST,
        "/v2/pub/tools/blobs/uploads/",
    )
    .await;
    expect_challenge(
        &srv,
        &r,
        Some("repository:pub/tools:pull,push"),
        Some("insufficient_scope"),
    );
    let r = put_manifest_as(&srv, Some(&anon), "pub/tools", "v2", &img.manifest).await;
    assert_eq!(r.status, 401, "{r}");

    // Private repositories: nothing.
    let anon = token(&srv, None, &[&scope("team/app", "pull")]).await;
    assert!(granted(&anon, "team/app").is_empty());
    let r = call(&srv, Some(&anon), Method::GET, "/v2/team/app/manifests/v1").await;
    expect_challenge(
        &srv,
        &r,
        Some("repository:team/app:pull"),
        Some("insufficient_scope"),
    );

    // No longer public: no more anonymous pull in new tokens.
    admin::set_public(&srv.catalog().await, "pub/*", false)
        .await
        .expect("set private");
    let anon = token(&srv, None, &[&scope("pub/tools", "pull")]).await;
    assert!(granted(&anon, "pub/tools").is_empty());
    let r = call(&srv, Some(&anon), Method::GET, "/v2/pub/tools/manifests/v1").await;
    assert_eq!(r.status, 401, "{r}");
}

#[tokio::test]
async fn sessions_and_content_of_other_repositories_stay_out_of_reach() {
    let srv = start().await;
    let admin_tok = token_all(&srv, Some("admin"), &["secret/y"]).await;
    let secret_img = push_image_as(&srv, &admin_tok, "secret/y", "v1", 11).await;
    let location = call(
        &srv,
        Some(&admin_tok),
        Method::POST,
        "/v2/secret/y/blobs/uploads/",
    )
    .await
    .expect(202)
    .location();
    let id = location
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .expect("upload id")
        .split('?')
        .next()
        .expect("upload id")
        .to_owned();

    // A writer of team/* names the admin's session under its own repository.
    let writer = token_all(&srv, Some("writer"), &["team/x"]).await;
    let data = pattern(20, 12);
    let digest = sha256(&data);
    let theirs = format!("/v2/team/x/blobs/uploads/{id}");
    call(&srv, Some(&writer), Method::GET, &theirs)
        .await
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    let r = call_with_body(
        &srv,
        Some(&writer),
        Method::PATCH,
        &theirs,
        "application/octet-stream",
        data.clone(),
    )
    .await;
    r.expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    let r = call_with_body(
        &srv,
        Some(&writer),
        Method::PUT,
        &with_query(&theirs, "digest", &digest),
        "application/octet-stream",
        data.clone(),
    )
    .await;
    r.expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    call(&srv, Some(&writer), Method::DELETE, &theirs)
        .await
        .expect_error(404, "BLOB_UPLOAD_UNKNOWN");
    // The session is intact.
    let r = call(&srv, Some(&admin_tok), Method::GET, &location)
        .await
        .expect(204);
    assert_eq!(r.must_header("range"), "0-0");

    // Digests of another repository's content open nothing.
    call(
        &srv,
        Some(&writer),
        Method::GET,
        &format!("/v2/team/x/blobs/{}", secret_img.layer.digest),
    )
    .await
    .expect_error(404, "BLOB_UNKNOWN");
    call(
        &srv,
        Some(&writer),
        Method::GET,
        &format!("/v2/team/x/manifests/{}", secret_img.digest),
    )
    .await
    .expect(404);
    put_manifest_as(
        &srv,
        Some(&writer),
        "team/x",
        "stolen",
        &secret_img.manifest,
    )
    .await
    .expect_error(400, "MANIFEST_BLOB_UNKNOWN");
}

// =====================================================================================
// The first admin
// =====================================================================================

/// `WHARF_ADMIN_PASSWORD` is process-wide and read by `build_state`: the
/// tests that set or clear it hold this lock while they do. The other tests
/// of this file create their users first, so the variable cannot change what
/// their servers do.
static ENV_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const ADMIN_PASSWORD_VAR: &str = "WHARF_ADMIN_PASSWORD";

/// Holds `ENV_LOCK` with `WHARF_ADMIN_PASSWORD` set to a value (or unset);
/// restores it when dropped.
struct AdminPasswordEnv {
    old: Option<std::ffi::OsString>,
    _guard: tokio::sync::MutexGuard<'static, ()>,
}

impl AdminPasswordEnv {
    async fn set(value: Option<&str>) -> AdminPasswordEnv {
        let guard = ENV_LOCK.lock().await;
        let old = std::env::var_os(ADMIN_PASSWORD_VAR);
        // SAFETY: only tests holding ENV_LOCK write the environment; other
        // threads read it only through std, which synchronizes with these
        // writes.
        unsafe {
            match value {
                Some(v) => std::env::set_var(ADMIN_PASSWORD_VAR, v),
                None => std::env::remove_var(ADMIN_PASSWORD_VAR),
            }
        }
        AdminPasswordEnv { old, _guard: guard }
    }
}

impl Drop for AdminPasswordEnv {
    fn drop(&mut self) {
        // SAFETY: as in `set`; the lock is still held here.
        unsafe {
            match &self.old {
                Some(v) => std::env::set_var(ADMIN_PASSWORD_VAR, v),
                None => std::env::remove_var(ADMIN_PASSWORD_VAR),
            }
        }
    }
}

fn auth_settings(dir: &std::path::Path) -> Settings {
    let mut settings = Settings::with_data_dir(dir);
    settings.storage.fsync = false;
    settings.auth.enabled = true;
    settings
}

#[tokio::test]
async fn auth_on_without_any_user_refuses_to_start() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut settings = auth_settings(dir.path());
    let _db = common::use_test_catalog(&mut settings).await;
    for value in [None, Some("")] {
        let env = AdminPasswordEnv::set(value).await;
        let result = wharf_server::build_state(&settings).await;
        drop(env);
        let err = match result {
            Ok(_) => panic!("started with auth on, no user and {value:?}"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains("WHARF_ADMIN_PASSWORD"), "{err}");
        assert!(err.contains("user add"), "{err}");
    }
    let cat = Catalog::open(&settings.catalog_url())
        .await
        .expect("catalog");
    assert_eq!(cat.user_count().await.expect("count"), 0);
}

#[tokio::test]
async fn wharf_admin_password_creates_the_first_admin_once() {
    let env = AdminPasswordEnv::set(Some("Env-Adm1n-pw")).await;
    let (mut srv, ()) = Server::start_auth(|_| {}, async |_: &Catalog| {}).await;
    drop(env);

    let cat = srv.catalog().await;
    let users = cat.users().await.expect("users");
    assert_eq!(users.len(), 1);
    assert_eq!(users[0].name, "admin");
    assert!(users[0].is_admin);
    assert!(!users[0].password_hash.contains("Env-Adm1n-pw"));

    let r = get_token(
        &srv,
        Some(("admin", "Env-Adm1n-pw")),
        &token_params(&[&scope("secret/x", "pull,push,delete")]),
    )
    .await
    .expect(200);
    let tok = r.json()["token"].as_str().expect("token").to_owned();
    assert_eq!(granted(&tok, "secret/x"), ["delete", "pull", "push"]);
    push_image_as(&srv, &tok, "secret/x", "v1", 13).await;

    // With a user present, the variable neither adds nor changes anyone.
    let env = AdminPasswordEnv::set(Some("Another-pw")).await;
    srv.restart().await;
    drop(env);
    get_token(&srv, Some(("admin", "Another-pw")), &token_params(&[]))
        .await
        .expect_error(401, "UNAUTHORIZED");
    get_token(&srv, Some(("admin", "Env-Adm1n-pw")), &token_params(&[]))
        .await
        .expect(200);
    assert_eq!(cat.user_count().await.expect("count"), 1);

    // And on a catalog whose only user is not called admin, no admin appears.
    let env = AdminPasswordEnv::set(Some("Env-Adm1n-pw")).await;
    let (other, ()) = Server::start_auth(
        |_| {},
        async |cat: &Catalog| {
            admin::add_user(cat, "alice", "alice-pw", false)
                .await
                .expect("add alice")
        },
    )
    .await;
    drop(env);
    get_token(&other, Some(("admin", "Env-Adm1n-pw")), &token_params(&[]))
        .await
        .expect_error(401, "UNAUTHORIZED");
    assert_eq!(other.catalog().await.user_count().await.expect("count"), 1);
}

/// The same rules through the binary, whose environment is its own.
#[tokio::test]
async fn the_binary_bootstraps_its_admin_from_the_environment() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let bin = env!("CARGO_BIN_EXE_wharf-server");
    let command = |listen: &str| {
        let mut c = std::process::Command::new(bin);
        c.args(["--data-dir"])
            .arg(dir.path())
            .args(["serve", "--listen", listen])
            .env_remove("WHARF_CONFIG")
            .env_remove(ADMIN_PASSWORD_VAR)
            .env("WHARF_AUTH_ENABLED", "true")
            .env("WHARF_STORAGE_FSYNC", "false")
            .env("WHARF_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        c
    };
    let wait = |child: &mut std::process::Child| {
        for _ in 0..600 {
            if let Some(status) = child.try_wait().expect("wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    };

    // No user and no WHARF_ADMIN_PASSWORD: it refuses to serve.
    let mut child = command("127.0.0.1:0").spawn().expect("spawn wharf-server");
    let Some(status) = wait(&mut child) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("wharf-server served with auth on and no user");
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("read stderr");
    assert!(!status.success(), "{status}: {stderr}");
    assert!(stderr.contains("WHARF_ADMIN_PASSWORD"), "{stderr}");

    // With it: serves, and "admin" logs in with it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("address")
        .port();
    let mut child = command(&format!("127.0.0.1:{port}"))
        .env(ADMIN_PASSWORD_VAR, "Bin-Adm1n-pw")
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn wharf-server");
    common::install_crypto_provider();
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let url = format!("http://127.0.0.1:{port}/token?service={SERVICE}&scope=repository:a/b:push");
    let mut answer = None;
    for _ in 0..300 {
        if let Ok(r) = client
            .get(&url)
            .basic_auth("admin", Some("Bin-Adm1n-pw"))
            .send()
            .await
        {
            answer = Some((r.status().as_u16(), r.text().await.unwrap_or_default()));
            break;
        }
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let (status, body) = answer.expect("wharf-server never answered");
    assert_eq!(status, 200, "{body}");
    let body: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        granted(body["token"].as_str().expect("token"), "a/b"),
        ["push"]
    );
}

/// With TLS on the listener the derived realm is `https://`: a client that
/// followed an `http://` realm would speak plain HTTP to the TLS port.
#[tokio::test]
async fn the_derived_realm_is_https_when_the_listener_serves_tls() {
    let srv = start_with(|s| s.tls.self_signed = true).await;
    let r = srv.send(srv.request(Method::GET, "/v2/")).await;
    let c = challenge(&r);
    let want = realm_of(&srv).replacen("http://", "https://", 1);
    assert_eq!(c.get("realm"), Some(&want), "{c:?}");
}

/// One HTTP/1.1 response read off a raw connection: the status line, or
/// None when the server closed the connection instead.
async fn read_response(s: &mut tokio::net::TcpStream) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = s.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            return head.lines().next().map(str::to_owned);
        }
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A small upload refused for want of a token has its body read, so the
/// client's retry with a token on the same connection gets an answer
/// (unread, the server would close the connection after the 401).
#[tokio::test]
async fn a_refused_small_upload_leaves_the_connection_usable() {
    use tokio::io::AsyncWriteExt;
    let srv = start().await;
    let mut s = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    let body = "x".repeat(30_000);
    let digest = format!("sha256:{}", "0".repeat(64));
    let head = format!(
        "POST /v2/team/app/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: x\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    // Headers first, the body a moment later, as clients that write them
    // with two calls do.
    s.write_all(head.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.write_all(body.as_bytes()).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), read_response(&mut s))
        .await
        .unwrap();
    assert!(
        first.as_deref().is_some_and(|l| l.contains(" 401 ")),
        "{first:?}"
    );
    s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let second = tokio::time::timeout(Duration::from_secs(10), read_response(&mut s))
        .await
        .unwrap();
    assert!(
        second.as_deref().is_some_and(|l| l.contains(" 401 ")),
        "the connection was closed after the refusal: {second:?}"
    );
}
