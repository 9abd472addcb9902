//! The web catalog at scale: a server (auth on) whose catalog is seeded
//! with 10,000 repositories and 100,000 tags (`wharf_server::seed`, what
//! `wharf-server seed` runs), then checked over real HTTP: counts, paging to
//! the last page of repositories and of a 10,000-tag repository, search,
//! sorting, a manifest and an index, and what an anonymous viewer sees —
//! on SQLite, or PostgreSQL when `WHARF_TEST_POSTGRES_URL` is set.
//!
//! Each call's time is printed; the test fails on a call slower than
//! `LIMIT` (loose: debug build, shared CPU). The < 100 ms target is
//! measured by `bench/run` ("web catalog at scale").

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use reqwest::Method;
use serde_json::Value;
use wharf_server::admin;
use wharf_server::catalog::Catalog;
use wharf_server::seed::{SeedOptions, repository_name, tags_of_repository};

const ADMIN_PW: &str = "Adm1n-Very-Secret-Pw";
/// A call slower than this in a debug build is a missing index, not noise.
const LIMIT: Duration = Duration::from_millis(1500);

struct Client<'a> {
    srv: &'a Server,
    token: Option<String>,
    slowest: std::cell::RefCell<(Duration, String)>,
}

impl Client<'_> {
    async fn get(&self, path: &str) -> Value {
        let rb = self.srv.request(Method::GET, path);
        let rb = match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        };
        let t = Instant::now();
        let r = self.srv.send(rb).await;
        let took = t.elapsed();
        let r = r.expect(200);
        assert!(took < LIMIT, "{path} took {took:?}");
        let mut slowest = self.slowest.borrow_mut();
        if took > slowest.0 {
            *slowest = (took, path.to_owned());
        }
        r.json()
    }
}

fn names(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["name"].as_str().expect("name").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_repositories_page_and_search_correctly() {
    let (srv, ()) = Server::start_auth(
        |_| {},
        async |cat: &Catalog| {
            admin::add_user(cat, "admin", ADMIN_PW, true).await.unwrap();
            admin::set_public(cat, "team-a/*", true).await.unwrap();
        },
    )
    .await;
    let opts = SeedOptions::default();
    let (repos, tags) = (opts.repositories as usize, opts.tags as usize);
    let store = wharf_server::store::BlobStore::open(srv.settings())
        .await
        .expect("open the store");
    let report = wharf_server::seed::seed(&srv.catalog().await, &store, opts)
        .await
        .expect("seed");
    eprintln!("{report}");
    assert!(
        Duration::from_secs_f64(report.seconds) < wharf_server::seed::SEED_BUDGET,
        "{report}"
    );
    let token = {
        let rb = srv
            .request(Method::GET, "/token?service=wharf-registry")
            .basic_auth("admin", Some(ADMIN_PW));
        srv.send(rb).await.expect(200).json()["token"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let admin = Client {
        srv: &srv,
        token: Some(token),
        slowest: Default::default(),
    };
    let all_names: BTreeSet<String> = (0..repos).map(repository_name).collect();

    let stats = admin.get("/api/v1/stats").await;
    assert_eq!(stats["repositories"], repos);
    assert_eq!(stats["tags"], tags);
    assert_eq!(stats["manifests"], report.manifests);
    assert_eq!(stats["blobs"], report.blobs);

    // Every repository once, in order, 100 at a time to the last page.
    let mut seen = Vec::new();
    let mut offset = 0;
    loop {
        let page = admin
            .get(&format!("/api/v1/repositories?limit=100&offset={offset}"))
            .await;
        assert_eq!(page["total"], repos);
        seen.extend(names(&page));
        match page["next_offset"].as_u64() {
            Some(n) => offset = n,
            None => break,
        }
    }
    assert_eq!(seen, all_names.iter().cloned().collect::<Vec<_>>());
    let last = admin.get("/api/v1/repositories?offset=9990&limit=25").await;
    assert_eq!(names(&last).len(), 10);
    assert!(last["next_offset"].is_null());

    // Search: the total is exactly the names holding the text.
    for q in ["api-000", "team-a/", "big", "nothing-like-this", "%", "_"] {
        let want: Vec<&String> = all_names.iter().filter(|n| n.contains(q)).collect();
        let enc = serde_urlencoded::to_string([("q", q)]).unwrap();
        let page = admin
            .get(&format!("/api/v1/repositories?{enc}&limit=100"))
            .await;
        assert_eq!(page["total"], want.len(), "q={q}");
        let got = names(&page);
        assert_eq!(
            got,
            want.iter()
                .take(100)
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
        );
    }

    // Most recently pushed first.
    let pushed = admin
        .get("/api/v1/repositories?sort=pushed&limit=100")
        .await;
    let times: Vec<i64> = pushed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["pushed_at"].as_i64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "{times:?}");
    let deep = admin
        .get("/api/v1/repositories?sort=pushed&offset=9900&limit=100")
        .await;
    assert_eq!(names(&deep).len(), 100);

    // The big repository: 10,000 tags, paged to the end.
    let big = admin.get("/api/v1/repositories/library/big").await;
    assert_eq!(big["tag_count"], tags_of_repository(0, repos, tags));
    let first = admin
        .get("/api/v1/repositories/library/big/tags?limit=100")
        .await;
    assert_eq!(first["total"], 10_000);
    let end = admin
        .get("/api/v1/repositories/library/big/tags?limit=100&offset=9950")
        .await;
    assert_eq!(names(&end).len(), 50);
    assert!(end["next_offset"].is_null());
    let t = &end["items"][0];
    assert!(t["size"].as_u64().unwrap() > 0, "{t}");
    assert_eq!(t["platforms"].as_array().unwrap().len(), 1, "{t}");
    admin
        .get("/api/v1/repositories/library/big/tags?sort=pushed&offset=9000")
        .await;
    let found = admin
        .get("/api/v1/repositories/library/big/tags?q=1.99.")
        .await;
    assert_eq!(found["total"], 100);

    // A manifest with its config, and an index with its platforms.
    let m = admin
        .get("/api/v1/repositories/library/big/manifests/latest")
        .await;
    assert!(m["layers"].as_array().unwrap().len() >= 3, "{m}");
    assert!(m["config"]["history"].as_array().unwrap().len() == 5, "{m}");
    let indexed = repository_name(5);
    let tags_page = admin
        .get(&format!("/api/v1/repositories/{indexed}/tags"))
        .await;
    let latest = tags_page["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "latest")
        .expect("latest")
        .clone();
    assert_eq!(
        latest["platforms"],
        serde_json::json!(["linux/amd64", "linux/arm64/v8"])
    );
    let index = admin
        .get(&format!("/api/v1/repositories/{indexed}/manifests/latest"))
        .await;
    assert_eq!(index["platforms"].as_array().unwrap().len(), 2);
    let child = index["platforms"][1]["digest"].as_str().unwrap().to_owned();
    admin
        .get(&format!(
            "/api/v1/repositories/{indexed}/manifests/{child}/referrers"
        ))
        .await;

    // Anonymous: only the public team-a/* repositories, in lists and counts.
    let anon = Client {
        srv: &srv,
        token: None,
        slowest: Default::default(),
    };
    let public: Vec<&String> = all_names
        .iter()
        .filter(|n| n.starts_with("team-a/"))
        .collect();
    let page = anon.get("/api/v1/repositories?limit=100").await;
    assert_eq!(page["total"], public.len());
    assert!(names(&page).iter().all(|n| n.starts_with("team-a/")));
    let page = anon.get("/api/v1/repositories?q=api&sort=pushed").await;
    assert!(names(&page).iter().all(|n| n.starts_with("team-a/")));
    let stats = anon.get("/api/v1/stats").await;
    assert_eq!(stats["repositories"], public.len());
    let public_tags: usize = (0..repos)
        .filter(|&i| repository_name(i).starts_with("team-a/"))
        .map(|i| tags_of_repository(i, repos, tags))
        .sum();
    assert_eq!(stats["tags"], public_tags);
    let r = srv
        .send(srv.request(Method::GET, "/api/v1/repositories/library/big/tags"))
        .await;
    r.expect_error(404, "NAME_UNKNOWN");

    eprintln!("slowest call (admin): {:?}", admin.slowest.borrow());
    eprintln!("slowest call (anonymous): {:?}", anon.slowest.borrow());
}
