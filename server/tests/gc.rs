//! Online garbage collection against a running server: pushes and pulls
//! while collections run back to back never see a missing blob, and after
//! tags are deleted a collection removes exactly the unreferenced blobs,
//! leaving the catalog's byte count equal to what is on disk.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use futures::StreamExt;
use reqwest::Method;
use serde_json::Value;
use wharf_server::config::{StorageBackend, UntaggedPolicy};
use wharf_server::gc::{GcOptions, GcReport, collect};
use wharf_server::store::BlobStore;

const GRACE: Duration = Duration::from_millis(1500);

fn options(upload_max_age: Duration) -> GcOptions {
    GcOptions {
        grace: GRACE,
        untagged: UntaggedPolicy::Delete,
        upload_max_age,
        dry_run: false,
    }
}

/// Every object under the store's `blobs/`: digest -> size. On the local
/// filesystem the directory itself is walked as well and must agree.
async fn blobs_in_store(srv: &Server, store: &BlobStore) -> BTreeMap<String, u64> {
    let mut found = BTreeMap::new();
    let mut listing = store.list("blobs");
    while let Some(obj) = listing.next().await {
        let obj = obj.expect("list the store");
        let key = obj.key.as_ref().to_owned();
        let mut parts = key.split('/').skip(1);
        let (alg, _, hex) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        found.insert(format!("{alg}:{hex}"), obj.size);
    }
    if srv.settings().storage.backend == StorageBackend::Filesystem {
        assert_eq!(
            blobs_on_disk(&srv.settings().storage_path()),
            found,
            "the store's listing and the directory differ"
        );
    }
    found
}

/// Every file under the local store's `blobs/` dir: digest -> size.
fn blobs_on_disk(root: &Path) -> BTreeMap<String, u64> {
    fn walk(dir: &Path, out: &mut BTreeMap<String, u64>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let path = e.path();
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                walk(&path, out);
            } else {
                let hex = path.file_name().unwrap().to_string_lossy().into_owned();
                let alg = path
                    .parent()
                    .and_then(Path::parent)
                    .and_then(Path::file_name)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.insert(format!("{alg}:{hex}"), meta.len());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(&root.join("blobs"), &mut out);
    out
}

async fn objects_under(store: &BlobStore, prefix: &str) -> usize {
    store.list(prefix).count().await
}

/// Pushes a blob the way docker does: HEAD first, upload only if missing.
/// Alternates monolithic, chunked and mount uploads.
async fn push_blob(srv: &Server, repo: &str, data: &[u8], how: u64, force: bool) {
    let digest = sha256(data);
    if !force {
        let head = srv.head(&format!("/v2/{repo}/blobs/{digest}")).await;
        if head.status == 200 {
            return;
        }
        assert_eq!(head.status, 404, "HEAD blob: {head}");
    }
    match how % 3 {
        0 => {
            let r = srv
                .post(
                    &format!("/v2/{repo}/blobs/uploads/?digest={digest}"),
                    data.to_vec(),
                )
                .await;
            assert_eq!(r.status, 201, "monolithic push: {r}");
        }
        1 => {
            let loc = srv.start_upload(repo).await;
            let half = data.len() / 2;
            let r = srv
                .patch(&loc, &data[..half], Some(&format!("0-{}", half.max(1) - 1)))
                .await;
            let loc = if half == 0 {
                loc
            } else {
                assert_eq!(r.status, 202, "chunk: {r}");
                r.location()
            };
            let r = srv
                .put_bytes(&with_query(&loc, "digest", &digest), data[half..].to_vec())
                .await;
            assert_eq!(r.status, 201, "chunked push: {r}");
        }
        _ => {
            // Mount from a repository that has it, else the 202 fallback.
            let r = srv
                .send(
                    srv.request(
                        Method::POST,
                        &format!("/v2/{repo}/blobs/uploads/?mount={digest}"),
                    )
                    .header("content-length", "0"),
                )
                .await;
            if r.status == 201 {
                return;
            }
            assert_eq!(r.status, 202, "mount: {r}");
            let r = srv
                .put_bytes(&with_query(&r.location(), "digest", &digest), data.to_vec())
                .await;
            assert_eq!(r.status, 201, "upload after a refused mount: {r}");
        }
    }
}

/// Pushes an image (config + layers) under `tag`. A manifest refused with
/// MANIFEST_BLOB_UNKNOWN (a blob collected after the HEAD said it was there)
/// is retried after uploading its blobs, as a client would. Returns the
/// number of such retries.
async fn push_image(srv: &Server, repo: &str, tag: &str, blobs: &[Vec<u8>], how: u64) -> u64 {
    let (config, layers) = blobs.split_first().unwrap();
    let manifest = to_bytes(&image_manifest(
        OCI_MANIFEST,
        &Desc::of(OCI_CONFIG, config),
        &layers
            .iter()
            .map(|l| Desc::of(OCI_LAYER, l))
            .collect::<Vec<_>>(),
    ));
    for attempt in 0..5 {
        for (i, b) in blobs.iter().enumerate() {
            push_blob(srv, repo, b, how + i as u64, attempt > 0).await;
        }
        let r = srv.push_manifest(repo, tag, OCI_MANIFEST, &manifest).await;
        if r.status == 201 {
            return attempt;
        }
        r.expect_error(400, "MANIFEST_BLOB_UNKNOWN");
    }
    panic!("{repo}:{tag} could not be pushed in 5 attempts");
}

/// Pulls `repo:tag` like a client: manifest, then every blob, each checked
/// against its digest. `None` when the tag is not there.
async fn pull(srv: &Server, repo: &str, tag: &str) -> Option<Vec<String>> {
    let r = srv
        .send(
            srv.request(Method::GET, &format!("/v2/{repo}/manifests/{tag}"))
                .header("accept", OCI_MANIFEST),
        )
        .await;
    if r.status == 404 {
        return None;
    }
    let r = r.expect(200);
    let m: Value = r.json();
    let mut digests = vec![m["config"]["digest"].as_str().unwrap().to_owned()];
    for l in m["layers"].as_array().unwrap() {
        digests.push(l["digest"].as_str().unwrap().to_owned());
    }
    for d in &digests {
        let b = srv.get(&format!("/v2/{repo}/blobs/{d}")).await;
        assert_eq!(
            b.status, 200,
            "{repo}:{tag} was pulled but its blob {d} is not there: {b}"
        );
        assert_eq!(
            &sha256(&b.body),
            d,
            "{repo}:{tag}: blob {d} has other bytes"
        );
    }
    Some(digests)
}

/// The blobs of image `i` of worker `w`: a config of its own, a base layer
/// all images share, and a layer drawn from a small pool, so the same bytes
/// become garbage and are pushed again while collections run.
fn image_blobs(w: u64, i: u64) -> Vec<Vec<u8>> {
    vec![
        format!("{{\"worker\":{w},\"image\":{i}}}").into_bytes(),
        pattern(3000, 200),
        pattern(1000 + (i % 4) as usize, (w * 4 + i % 4) as u8),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pushes_and_pulls_never_see_a_missing_blob_while_gc_runs() {
    let srv = Arc::new(
        Server::start_with(|s| {
            s.gc.interval_secs = 0;
        })
        .await,
    );
    let catalog = srv.catalog().await;
    let store = BlobStore::open(srv.settings()).await.unwrap();

    // An upload session left behind by a client that went away.
    let abandoned = srv.start_upload("left/behind").await;
    srv.patch(&abandoned, b"some bytes", Some("0-9"))
        .await
        .expect(202);
    // Bytes of a crash between the store write and the row: an object no
    // row knows; removed once older than the grace period.
    let orphan = pattern(777, 99);
    let orphan_digest = sha256(&orphan);
    let orphan_key = BlobStore::blob_key(&orphan_digest.parse().unwrap());
    let mut w = store.writer(orphan_key.clone()).await;
    w.write(orphan.clone().into()).await.unwrap();
    w.finish().await.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let gc_runs = Arc::new(AtomicU64::new(0));
    let freed = Arc::new(AtomicU64::new(0));
    let gc = {
        let (catalog, store, stop) = (catalog.clone(), store.clone(), stop.clone());
        let (gc_runs, freed) = (gc_runs.clone(), freed.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let report: GcReport = collect(&catalog, &store, &options(Duration::from_secs(60)))
                    .await
                    .expect("a collection while the registry serves");
                gc_runs.fetch_add(1, Ordering::Relaxed);
                freed.fetch_add(report.blobs_removed, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    const WORKERS: u64 = 4;
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let srv = srv.clone();
        workers.push(tokio::spawn(async move {
            let repo = format!("gc/worker{w}");
            let mut retries = 0;
            let mut i = 0;
            while Instant::now() < deadline || i < 6 {
                let tag = format!("t{i}");
                retries += push_image(&srv, &repo, &tag, &image_blobs(w, i), w + i).await;
                // Our own tag, just pushed: it must pull whole.
                assert!(
                    pull(&srv, &repo, &tag).await.is_some(),
                    "{repo}:{tag} vanished"
                );
                // An older one, and another worker's latest: if the
                // manifest is there, so are its blobs.
                if i > 0 {
                    pull(&srv, &repo, &format!("t{}", i - 1)).await;
                }
                pull(&srv, &format!("gc/worker{}", (w + 1) % WORKERS), &tag).await;
                if i >= 2 {
                    srv.delete(&format!("/v2/{repo}/manifests/t{}", i - 2))
                        .await
                        .expect(202);
                }
                i += 1;
            }
            (i, retries)
        }));
    }
    let mut pushed = 0;
    let mut retries = 0;
    for w in workers {
        let (n, r) = w.await.expect("a worker failed");
        pushed += n;
        retries += r;
    }
    stop.store(true, Ordering::Relaxed);
    gc.await.expect("the collector failed");
    let runs = gc_runs.load(Ordering::Relaxed);
    eprintln!(
        "{pushed} images pushed and pulled, {runs} collections, {} blobs collected meanwhile, \
         {retries} manifest pushes retried after MANIFEST_BLOB_UNKNOWN",
        freed.load(Ordering::Relaxed)
    );
    assert!(runs >= 3, "only {runs} collections ran");
    assert!(
        freed.load(Ordering::Relaxed) > 0,
        "nothing was collected during the run"
    );

    // ---- quiet now: delete some tags, then exactly their blobs go.
    for w in 0..2 {
        let tags = srv.get(&format!("/v2/gc/worker{w}/tags/list")).await.json();
        for t in tags["tags"].as_array().unwrap() {
            let t = t.as_str().unwrap();
            srv.delete(&format!("/v2/gc/worker{w}/manifests/{t}"))
                .await
                .expect(202);
        }
    }
    tokio::time::sleep(GRACE + Duration::from_millis(200)).await;
    let report = collect(&catalog, &store, &options(Duration::ZERO))
        .await
        .unwrap();
    eprintln!("{report}");
    assert_eq!(report.uploads_removed, 1, "the abandoned session: {report}");

    let mut expected: BTreeSet<String> = BTreeSet::new();
    for w in 0..WORKERS {
        let repo = format!("gc/worker{w}");
        let tags = srv.get(&format!("/v2/{repo}/tags/list")).await.json();
        for t in tags["tags"].as_array().into_iter().flatten() {
            let blobs = pull(&srv, &repo, t.as_str().unwrap()).await.unwrap();
            expected.extend(blobs);
        }
    }
    let on_disk = blobs_in_store(&srv, &store).await;
    let disk_set: BTreeSet<String> = on_disk.keys().cloned().collect();
    assert_eq!(
        disk_set, expected,
        "the store must hold exactly the blobs of the remaining tags"
    );
    assert_eq!(
        store.size(&orphan_key).await.unwrap(),
        None,
        "the orphan is still there"
    );
    let (count, bytes) = catalog.stored_blobs().await.unwrap();
    assert_eq!(count as usize, on_disk.len());
    assert_eq!(
        bytes,
        on_disk.values().sum::<u64>(),
        "catalog bytes != bytes on disk"
    );
    assert_eq!(
        objects_under(&store, "uploads").await,
        0,
        "upload objects left"
    );
    let r = srv.get(&abandoned).await;
    r.expect_error(404, "BLOB_UPLOAD_UNKNOWN");

    // Deleted repositories' blobs are gone for pulls too, and a second run
    // has nothing left to do.
    let again = collect(&catalog, &store, &options(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(
        again.manifests_removed + again.blobs_removed + again.orphans_removed,
        0,
        "{again}"
    );
}

#[tokio::test]
async fn a_deleted_tag_frees_its_layers_and_pulls_still_work() {
    let srv = Server::start().await;
    let catalog = srv.catalog().await;
    let store = BlobStore::open(srv.settings()).await.unwrap();
    let a = srv.push_image("app", "a", 1).await;
    let b = srv.push_image("app", "b", 2).await;
    srv.delete("/v2/app/manifests/a").await.expect(202);
    tokio::time::sleep(GRACE + Duration::from_millis(100)).await;

    let mut dry = options(Duration::from_secs(3600));
    dry.dry_run = true;
    let before = blobs_in_store(&srv, &store).await;
    let report = collect(&catalog, &store, &dry).await.unwrap();
    assert_eq!(
        (report.manifests_removed, report.blobs_removed),
        (1, 2),
        "{report}"
    );
    assert_eq!(blobs_in_store(&srv, &store).await, before);

    let report = collect(&catalog, &store, &options(Duration::from_secs(3600)))
        .await
        .unwrap();
    assert_eq!(
        (report.manifests_removed, report.blobs_removed),
        (1, 2),
        "{report}"
    );
    assert_eq!(
        report.blob_bytes_removed,
        (a.config.size + a.layer.size) as u64
    );
    srv.get(&format!("/v2/app/blobs/{}", a.layer.digest))
        .await
        .expect_error(404, "BLOB_UNKNOWN");
    srv.get(&format!("/v2/app/manifests/{}", a.digest))
        .await
        .expect_error(404, "MANIFEST_UNKNOWN");
    assert_eq!(pull(&srv, "app", "b").await.unwrap().len(), 2);
    srv.get(&format!("/v2/app/blobs/{}", b.layer.digest))
        .await
        .expect(200);
    // The same layer pushed again after its collection is stored anew.
    srv.push_image("app", "a", 1).await;
    assert_eq!(pull(&srv, "app", "a").await.unwrap().len(), 2);
}

/// The narrowest race: blobs nobody refers to, pushed again and again just
/// as they become old enough to collect, while collections run back to
/// back with a short grace period. A push may be told to retry (429) when
/// its claim outlived the grace period, but no live row may ever lack its
/// bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blob_pushed_while_it_is_collected_is_never_lost() {
    let srv = Arc::new(Server::start().await);
    let catalog = srv.catalog().await;
    let store = BlobStore::open(srv.settings()).await.unwrap();
    let grace = Duration::from_millis(100);
    let stop = Arc::new(AtomicBool::new(false));
    let collected = Arc::new(AtomicU64::new(0));
    let gc = {
        let (catalog, store, stop, collected) = (
            catalog.clone(),
            store.clone(),
            stop.clone(),
            collected.clone(),
        );
        tokio::spawn(async move {
            let opts = GcOptions {
                grace,
                untagged: UntaggedPolicy::Delete,
                upload_max_age: Duration::from_secs(60),
                dry_run: false,
            };
            while !stop.load(Ordering::Relaxed) {
                let r = collect(&catalog, &store, &opts).await.unwrap();
                collected.fetch_add(r.blobs_removed, Ordering::Relaxed);
            }
        })
    };
    const PUSHERS: u64 = 6;
    let pool: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..PUSHERS)
            .map(|i| pattern(64 * 1024, 50 + i as u8))
            .collect(),
    );
    let deadline = Instant::now() + Duration::from_secs(6);
    let mut pushers = Vec::new();
    for p in 0..PUSHERS {
        let (srv, pool) = (srv.clone(), pool.clone());
        pushers.push(tokio::spawn(async move {
            let (mut ok, mut busy) = (0u64, 0u64);
            let mut n = p;
            while Instant::now() < deadline {
                let data = &pool[p as usize];
                let digest = sha256(data);
                let r = if n % 2 == 0 {
                    srv.post(
                        &format!("/v2/hot/p{p}/blobs/uploads/?digest={digest}"),
                        data.clone(),
                    )
                    .await
                } else {
                    let loc = srv.start_upload(&format!("hot/p{p}")).await;
                    srv.put_bytes(&with_query(&loc, "digest", &digest), data.clone())
                        .await
                };
                let pushed = Instant::now();
                match r.status.as_u16() {
                    201 => {
                        ok += 1;
                        // Used just now, so within the grace period: it
                        // must be there, whole.
                        let got = srv.get(&format!("/v2/hot/p{p}/blobs/{digest}")).await;
                        if pushed.elapsed() < grace / 2 {
                            assert_eq!(got.status, 200, "{digest} just pushed: {got}");
                            assert_eq!(sha256(&got.body), digest);
                        }
                    }
                    429 => {
                        r.expect_error(429, "TOOMANYREQUESTS");
                        busy += 1
                    }
                    _ => panic!("push of {digest}: {r}"),
                }
                // Idle for about the grace period, so the blob is often
                // collected just as it is pushed again.
                let pause = 95 + (n * 7 % 15);
                tokio::time::sleep(Duration::from_millis(pause)).await;
                n += 1;
            }
            (ok, busy)
        }));
    }
    let (mut ok, mut busy) = (0, 0);
    for p in pushers {
        let (o, b) = p.await.unwrap();
        ok += o;
        busy += b;
    }
    stop.store(true, Ordering::Relaxed);
    gc.await.unwrap();
    eprintln!(
        "{ok} pushes, {busy} told to retry, {} blobs collected",
        collected.load(Ordering::Relaxed)
    );
    assert!(
        ok > busy * 4,
        "{ok} pushes succeeded, {busy} were told to retry"
    );
    assert!(collected.load(Ordering::Relaxed) > 0);
    // Every live row has its bytes, and every such blob pulls whole.
    for b in catalog.gc_blobs().await.unwrap() {
        if b.state != "live" {
            continue;
        }
        let key = BlobStore::blob_key(&b.digest.parse().unwrap());
        assert_eq!(
            store.size(&key).await.unwrap(),
            Some(b.size),
            "live row {} without its bytes",
            b.digest
        );
        for r in catalog.repositories_with_blob(&b.digest).await.unwrap() {
            let got = srv
                .get(&format!("/v2/{r}/blobs/{}", b.digest))
                .await
                .expect(200);
            assert_eq!(sha256(&got.body), b.digest);
        }
    }
}
