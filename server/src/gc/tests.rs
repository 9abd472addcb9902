//! The mark rules on hand-made rows, and whole runs against a real catalog
//! (SQLite in a temporary directory, and PostgreSQL when
//! `WHARF_TEST_POSTGRES_URL` names a server) with an in-memory object store.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;

use super::*;
use crate::catalog::{Backends, Claim};
use crate::digest::Algorithm;
use crate::names::{Reference, RepoName};
use crate::registry::{ByteStream, Limits, Registry, RegistryError};

// ---- the mark rules on rows -------------------------------------------------------

fn m(repo: i64, digest: &str, subject: Option<&str>, used_at: i64) -> GcManifest {
    GcManifest {
        repository_id: repo,
        repository: format!("r{repo}"),
        digest: digest.into(),
        subject: subject.map(Into::into),
        size: 100,
        used_at,
    }
}

fn blob(repo: i64, manifest: &str, child: &str) -> GcReference {
    GcReference {
        repository_id: repo,
        manifest: manifest.into(),
        child: child.into(),
        kind: "blob".into(),
    }
}

fn child(repo: i64, manifest: &str, child: &str) -> GcReference {
    GcReference {
        repository_id: repo,
        manifest: manifest.into(),
        child: child.into(),
        kind: "manifest".into(),
    }
}

fn key(repo: i64, d: &str) -> ManifestKey {
    (repo, d.to_owned())
}

const OLD: i64 = 1_000;
const CUTOFF: i64 = 5_000;
const YOUNG: i64 = 9_000;

#[test]
fn tags_and_young_manifests_are_roots_and_keep_their_blobs() {
    let ms = [
        m(1, "tagged", None, OLD),
        m(1, "untagged-old", None, OLD),
        m(1, "untagged-young", None, YOUNG),
    ];
    let refs = [
        blob(1, "tagged", "cfg-a"),
        blob(1, "tagged", "shared"),
        blob(1, "untagged-old", "cfg-b"),
        blob(1, "untagged-old", "shared"),
        blob(1, "untagged-young", "cfg-c"),
    ];
    let tagged = [key(1, "tagged")];
    let marked = mark(&ms, &tagged, &refs, UntaggedPolicy::Delete, CUTOFF);
    assert!(marked.kept.contains(&key(1, "tagged")));
    assert!(marked.kept.contains(&key(1, "untagged-young")));
    assert!(!marked.kept.contains(&key(1, "untagged-old")));
    let live: HashSet<&str> = marked.live_blobs.iter().map(String::as_str).collect();
    assert_eq!(live, HashSet::from(["cfg-a", "shared", "cfg-c"]));

    // Under "keep" every manifest is a root.
    let marked = mark(&ms, &tagged, &refs, UntaggedPolicy::Keep, CUTOFF);
    assert_eq!(marked.kept.len(), 3);
    assert!(marked.live_blobs.contains("cfg-b"));
}

#[test]
fn a_kept_index_keeps_its_children_and_an_old_untagged_one_does_not() {
    let ms = [
        m(1, "index", None, OLD),
        m(1, "amd64", None, OLD),
        m(1, "arm64", None, OLD),
        m(2, "index2", None, OLD),
        m(2, "child2", None, OLD),
        // Same digest in another repository: not reached from repo 1.
        m(2, "amd64", None, OLD),
    ];
    let refs = [
        child(1, "index", "amd64"),
        child(1, "index", "arm64"),
        blob(1, "amd64", "layer-amd64"),
        blob(1, "arm64", "layer-arm64"),
        child(2, "index2", "child2"),
        blob(2, "child2", "layer2"),
        blob(2, "amd64", "layer-amd64-r2"),
    ];
    let marked = mark(
        &ms,
        &[key(1, "index")],
        &refs,
        UntaggedPolicy::Delete,
        CUTOFF,
    );
    assert!(marked.kept.contains(&key(1, "amd64")));
    assert!(marked.kept.contains(&key(1, "arm64")));
    assert!(!marked.kept.contains(&key(2, "index2")));
    assert!(!marked.kept.contains(&key(2, "child2")));
    assert!(!marked.kept.contains(&key(2, "amd64")));
    assert!(marked.live_blobs.contains("layer-amd64"));
    assert!(marked.live_blobs.contains("layer-arm64"));
    assert!(!marked.live_blobs.contains("layer2"));
    assert!(!marked.live_blobs.contains("layer-amd64-r2"));
}

#[test]
fn referrers_follow_their_subject_and_not_the_other_way() {
    let ms = [
        m(1, "image", None, OLD),
        m(1, "sig", Some("image"), OLD),
        // A referrer of a referrer (a signature of an SBOM).
        m(1, "sig-of-sig", Some("sig"), OLD),
        m(1, "orphan-image", None, OLD),
        m(1, "tagged-sig", Some("orphan-image"), OLD),
        // Subject never pushed.
        m(1, "dangling-sig", Some("missing"), OLD),
    ];
    let refs = [
        blob(1, "sig", "sig-blob"),
        blob(1, "sig-of-sig", "sig2-blob"),
        blob(1, "orphan-image", "orphan-layer"),
        blob(1, "tagged-sig", "tagged-sig-blob"),
    ];
    let tagged = [key(1, "image"), key(1, "tagged-sig")];
    let marked = mark(&ms, &tagged, &refs, UntaggedPolicy::Delete, CUTOFF);
    assert!(marked.kept.contains(&key(1, "sig")));
    assert!(marked.kept.contains(&key(1, "sig-of-sig")));
    assert!(marked.live_blobs.contains("sig-blob"));
    assert!(marked.live_blobs.contains("sig2-blob"));
    // A tagged referrer does not keep its subject.
    assert!(marked.kept.contains(&key(1, "tagged-sig")));
    assert!(!marked.kept.contains(&key(1, "orphan-image")));
    assert!(!marked.live_blobs.contains("orphan-layer"));
    assert!(!marked.kept.contains(&key(1, "dangling-sig")));
    // A referrer in another repository is not reached.
    let other = [m(2, "sig", Some("image"), OLD)];
    let marked = mark(
        &other,
        &[key(1, "image")],
        &[],
        UntaggedPolicy::Delete,
        CUTOFF,
    );
    assert!(marked.kept.is_empty());
}

#[test]
fn parents_are_deleted_before_their_children() {
    let ms = [
        m(1, "leaf", None, OLD),
        m(1, "index", None, OLD),
        m(1, "index-of-index", None, OLD),
    ];
    let refs = [
        child(1, "index-of-index", "index"),
        child(1, "index", "leaf"),
    ];
    let order: Vec<&str> = deletion_order(ms.iter().collect(), &refs)
        .into_iter()
        .map(|m| m.digest.as_str())
        .collect();
    assert_eq!(order, ["index-of-index", "index", "leaf"]);
}

#[test]
fn only_blob_keys_parse_as_digests() {
    let d = Digest::of(Algorithm::Sha256, b"x");
    let key = BlobStore::blob_key(&d);
    assert_eq!(digest_of_key(key.as_ref()), Some(d.clone()));
    let hex = d.hex();
    assert_eq!(digest_of_key(&format!("blobs/sha256/zz/{hex}")), None);
    assert_eq!(digest_of_key(&format!("blobs/sha256/{hex}")), None);
    assert_eq!(digest_of_key("blobs/sha256/ab/abc"), None);
    assert_eq!(digest_of_key(&format!("uploads/x/{hex}")), None);
}

#[test]
fn the_report_reads_as_a_summary() {
    let r = GcReport {
        blobs_removed: 2,
        blob_bytes_removed: 3 * 1024 * 1024,
        ..GcReport::default()
    };
    let text = r.to_string();
    assert!(
        text.contains("blobs:            2  (3.0 MiB (3145728 bytes))"),
        "{text}"
    );
    assert!(text.contains("removed"), "{text}");
    let dry = GcReport { dry_run: true, ..r };
    assert!(dry.to_string().contains("would remove"));
}

// ---- whole runs ------------------------------------------------------------------

struct Fixture {
    _dir: tempfile::TempDir,
    catalog: Catalog,
    store: BlobStore,
    registry: Registry,
}

async fn fixture(url: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(url).await.unwrap();
    let store = BlobStore::in_memory();
    let registry = Registry::new(catalog.clone(), store.clone(), Limits::default());
    Fixture {
        _dir: dir,
        catalog,
        store,
        registry,
    }
}

fn body(data: &[u8]) -> ByteStream {
    let b = Bytes::copy_from_slice(data);
    futures::stream::once(async move { Ok(b) }).boxed()
}

fn repo(name: &str) -> RepoName {
    RepoName::parse(name).unwrap()
}

fn opts(policy: UntaggedPolicy, dry_run: bool) -> GcOptions {
    GcOptions {
        grace: Duration::ZERO,
        untagged: policy,
        upload_max_age: Duration::ZERO,
        dry_run,
    }
}

impl Fixture {
    async fn push_blob(&self, r: &str, data: &[u8]) -> Digest {
        let d = Digest::of(Algorithm::Sha256, data);
        self.registry
            .upload_monolithic(&repo(r), &d, body(data))
            .await
            .unwrap();
        d
    }

    /// An image of one config and the given layers; returns its digest.
    async fn push_image(
        &self,
        r: &str,
        tag: Option<&str>,
        config: &[u8],
        layers: &[&[u8]],
    ) -> String {
        let cfg = self.push_blob(r, config).await;
        let mut descs = Vec::new();
        for l in layers {
            let d = self.push_blob(r, l).await;
            descs.push(serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": d.as_str(), "size": l.len()
            }));
        }
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": cfg.as_str(), "size": config.len()},
            "layers": descs,
        }))
        .unwrap();
        let digest = Digest::of(Algorithm::Sha256, &manifest);
        let reference = match tag {
            Some(t) => Reference::Tag(t.into()),
            None => Reference::Digest(digest.clone()),
        };
        self.registry
            .put_manifest(
                &repo(r),
                &reference,
                Some("application/vnd.oci.image.manifest.v1+json"),
                &manifest,
            )
            .await
            .unwrap();
        digest.to_string()
    }

    async fn has_object(&self, data: &[u8]) -> bool {
        let d = Digest::of(Algorithm::Sha256, data);
        self.store
            .size(&BlobStore::blob_key(&d))
            .await
            .unwrap()
            .is_some()
    }

    async fn store_bytes(&self) -> u64 {
        let mut total = 0;
        let mut l = self.store.list("blobs");
        while let Some(o) = l.next().await {
            total += o.unwrap().size;
        }
        total
    }
}

async fn tick() {
    tokio::time::sleep(Duration::from_millis(5)).await;
}

#[tokio::test]
async fn deleting_a_tag_frees_exactly_the_unshared_blobs() {
    let backends = Backends::new().await;
    for url in &backends.urls {
        let f = fixture(url).await;
        f.push_image("app", Some("a"), b"config-a", &[b"base", b"only-a"])
            .await;
        f.push_image("app", Some("b"), b"config-b", &[b"base", b"only-b"])
            .await;
        tick().await;
        let before = f.store_bytes().await;

        // Under "keep", an untagged manifest still holds its blobs.
        f.registry
            .delete_manifest(&repo("app"), &Reference::Tag("a".into()))
            .await
            .unwrap();
        let r = collect(&f.catalog, &f.store, &opts(UntaggedPolicy::Keep, false))
            .await
            .unwrap();
        assert_eq!((r.manifests_removed, r.blobs_removed), (0, 0), "{r}");
        assert_eq!(f.store_bytes().await, before);

        // A dry run under "delete" reports and removes nothing.
        let dry = collect(&f.catalog, &f.store, &opts(UntaggedPolicy::Delete, true))
            .await
            .unwrap();
        assert_eq!((dry.manifests_removed, dry.blobs_removed), (1, 2), "{dry}");
        assert_eq!(
            dry.blob_bytes_removed,
            (b"config-a".len() + b"only-a".len()) as u64
        );
        assert_eq!(f.store_bytes().await, before);

        let r = collect(&f.catalog, &f.store, &opts(UntaggedPolicy::Delete, false))
            .await
            .unwrap();
        assert_eq!(
            (r.manifests_removed, r.blobs_removed, r.blob_bytes_removed),
            (
                dry.manifests_removed,
                dry.blobs_removed,
                dry.blob_bytes_removed
            ),
            "{r}"
        );
        assert!(!f.has_object(b"config-a").await);
        assert!(!f.has_object(b"only-a").await);
        for kept in [&b"base"[..], b"config-b", b"only-b"] {
            assert!(f.has_object(kept).await);
        }
        let (_, bytes) = f.catalog.stored_blobs().await.unwrap();
        assert_eq!(bytes, f.store_bytes().await);
        // Nothing left to do.
        let again = collect(&f.catalog, &f.store, &opts(UntaggedPolicy::Delete, false))
            .await
            .unwrap();
        assert_eq!(again.bytes_freed() + again.manifests_removed, 0, "{again}");
    }
    backends.drop_all().await;
}

#[tokio::test]
async fn the_grace_period_protects_young_manifests_and_blobs() {
    let backends = Backends::new().await;
    for url in &backends.urls {
        let f = fixture(url).await;
        f.push_image("app", None, b"cfg", &[b"layer"]).await;
        f.push_blob("app", b"loose").await;
        let mut o = opts(UntaggedPolicy::Delete, false);
        o.grace = Duration::from_secs(3600);
        let r = collect(&f.catalog, &f.store, &o).await.unwrap();
        assert_eq!(r.manifests_removed + r.blobs_removed, 0, "{r}");
        tick().await;
        o.grace = Duration::ZERO;
        let r = collect(&f.catalog, &f.store, &o).await.unwrap();
        assert_eq!((r.manifests_removed, r.blobs_removed), (1, 3), "{r}");
    }
    backends.drop_all().await;
}

#[tokio::test]
async fn a_push_waits_for_a_delete_in_progress_and_then_stores_its_bytes() {
    let backends = Backends::new().await;
    for url in &backends.urls {
        let f = fixture(url).await;
        let d = f.push_blob("app", b"bytes").await;
        tick().await;
        // Step one of a collection: the row is the collector's.
        assert!(
            f.catalog
                .gc_mark_blob_deleting(d.as_str(), now_ms())
                .await
                .unwrap()
        );
        assert_eq!(
            f.catalog.claim_blob(d.as_str(), 5).await.unwrap(),
            Claim::Deleting
        );
        // Mounts and manifest puts refuse it meanwhile.
        assert!(
            f.catalog
                .mount_blob("other", d.as_str())
                .await
                .unwrap()
                .is_none()
        );
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": d.as_str(), "size": 5},
            "layers": [],
        }))
        .unwrap();
        let put = f
            .registry
            .put_manifest(
                &repo("app"),
                &Reference::Tag("t".into()),
                Some("application/vnd.oci.image.manifest.v1+json"),
                &manifest,
            )
            .await;
        assert!(
            matches!(put, Err(RegistryError::ManifestBlobUnknown(_))),
            "{:?}",
            put.err()
        );
        // A push of the same bytes now waits until the collector is done...
        let push = {
            let registry = &f.registry;
            let d = d.clone();
            async move {
                registry
                    .upload_monolithic(&repo("app"), &d, body(b"bytes"))
                    .await
            }
        };
        let collector = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            f.store.delete(&BlobStore::blob_key(&d)).await.unwrap();
            f.catalog.gc_forget_blob(d.as_str()).await.unwrap();
        };
        let (pushed, ()) = tokio::join!(push, collector);
        pushed.unwrap();
        // ...and its bytes are there, behind a live row.
        assert!(f.has_object(b"bytes").await);
        assert_eq!(f.registry.blob_size(&repo("app"), &d).await.unwrap(), 5);
    }
    backends.drop_all().await;
}

#[tokio::test]
async fn a_claimed_digest_is_not_collected_even_as_an_orphan() {
    let backends = Backends::new().await;
    for url in &backends.urls {
        let f = fixture(url).await;
        // Bytes with no row (a crash between the store write and the row).
        let d = Digest::of(Algorithm::Sha256, b"orphan");
        let mut w = f.store.writer(BlobStore::blob_key(&d)).await;
        w.write(Bytes::from_static(b"orphan")).await.unwrap();
        w.finish().await.unwrap();
        // A push claims it before the collector looks.
        assert!(matches!(
            f.catalog.claim_blob(d.as_str(), 6).await.unwrap(),
            Claim::Claimed(_)
        ));
        let mut o = opts(UntaggedPolicy::Delete, false);
        o.grace = Duration::from_millis(300);
        // The pending row is young: kept; the object is known: not an orphan.
        let r = collect(&f.catalog, &f.store, &o).await.unwrap();
        assert_eq!(r.orphans_removed + r.blobs_removed, 0, "{r}");
        assert!(f.has_object(b"orphan").await);

        // Without the claim it is an orphan, removed once past the grace.
        let d2 = Digest::of(Algorithm::Sha256, b"orphan2");
        let mut w = f.store.writer(BlobStore::blob_key(&d2)).await;
        w.write(Bytes::from_static(b"orphan2")).await.unwrap();
        w.finish().await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        let r = collect(&f.catalog, &f.store, &o).await.unwrap();
        // The claimed digest's row is past the grace by now too: its (pending)
        // row and bytes go as an ordinary blob, the other as an orphan.
        assert_eq!(r.blobs_removed, 1, "{r}");
        assert_eq!((r.orphans_removed, r.orphan_bytes_removed), (1, 7), "{r}");
        assert!(!f.has_object(b"orphan2").await);
        // Both digests can be pushed again afterwards.
        f.push_blob("app", b"orphan2").await;
        f.push_blob("app", b"orphan").await;
        assert!(f.has_object(b"orphan2").await);
        assert!(f.has_object(b"orphan").await);
    }
    backends.drop_all().await;
}

#[tokio::test]
async fn stale_upload_sessions_go_with_their_bytes() {
    let backends = Backends::new().await;
    for url in &backends.urls {
        let f = fixture(url).await;
        let s = f.registry.start_upload(&repo("app")).await.unwrap();
        f.registry
            .upload_chunk(&repo("app"), &s.id, Some(0), None, body(b"half a blob"))
            .await
            .unwrap();
        let mut o = opts(UntaggedPolicy::Keep, false);
        o.upload_max_age = Duration::from_secs(3600);
        let r = collect(&f.catalog, &f.store, &o).await.unwrap();
        assert_eq!(r.uploads_removed, 0, "{r}");
        tick().await;
        o.upload_max_age = Duration::ZERO;
        let r = collect(&f.catalog, &f.store, &o).await.unwrap();
        assert_eq!((r.uploads_removed, r.upload_bytes_removed), (1, 11), "{r}");
        assert!(f.catalog.upload(&s.id).await.unwrap().is_none());
        let mut left = f.store.list("uploads");
        assert!(left.next().await.is_none(), "upload objects left behind");
    }
    backends.drop_all().await;
}

#[tokio::test]
async fn one_collector_at_a_time_through_the_lease() {
    let backends = Backends::new().await;
    for url in &backends.urls {
        let f = fixture(url).await;
        let far = now_ms() + 60_000;
        assert!(f.catalog.take_lease("gc", "replica-a", far).await.unwrap());
        assert!(!f.catalog.take_lease("gc", "replica-b", far).await.unwrap());
        let err = collect(&f.catalog, &f.store, &opts(UntaggedPolicy::Keep, false))
            .await
            .unwrap_err();
        assert!(
            matches!(err, GcError::Busy { ref holder, .. } if holder == "replica-a"),
            "{err}"
        );
        // A dry run needs no lease.
        collect(&f.catalog, &f.store, &opts(UntaggedPolicy::Keep, true))
            .await
            .unwrap();
        // Renewal by the holder works; an expired lease can be taken over.
        assert!(
            f.catalog
                .take_lease("gc", "replica-a", now_ms() - 1)
                .await
                .unwrap()
        );
        assert!(f.catalog.take_lease("gc", "replica-b", far).await.unwrap());
        f.catalog.release_lease("gc", "replica-b").await.unwrap();
        collect(&f.catalog, &f.store, &opts(UntaggedPolicy::Keep, false))
            .await
            .unwrap();
    }
    backends.drop_all().await;
}

#[tokio::test]
async fn a_claim_that_outlived_the_grace_period_cannot_make_a_row_live() {
    let backends = Backends::new().await;
    for url in &backends.urls {
        let f = fixture(url).await;
        let d = Digest::of(Algorithm::Sha256, b"slow");
        let d = d.as_str();
        let Claim::Claimed(first) = f.catalog.claim_blob(d, 4).await.unwrap() else {
            panic!("not claimed")
        };
        tick().await;
        // The collector takes the row: the claim is older than its cutoff. The
        // bytes the slow push placed are deleted with it.
        assert!(f.catalog.gc_mark_blob_deleting(d, now_ms()).await.unwrap());
        f.catalog.gc_forget_blob(d).await.unwrap();
        // The slow push's link comes too late: nothing is made live, not even
        // after another push claimed the digest anew.
        assert!(!f.catalog.link_blob("app", d, &first).await.unwrap());
        assert!(f.catalog.blob_size(d).await.unwrap().is_none());
        let Claim::Claimed(second) = f.catalog.claim_blob(d, 4).await.unwrap() else {
            panic!("not claimed")
        };
        assert_ne!(first, second);
        assert!(!f.catalog.link_blob("app", d, &first).await.unwrap());
        assert!(f.catalog.blob_size(d).await.unwrap().is_none());
        assert!(f.catalog.link_blob("app", d, &second).await.unwrap());
        assert_eq!(f.catalog.blob_size(d).await.unwrap(), Some(4));
    }
    backends.drop_all().await;
}

#[tokio::test]
async fn deletions_a_dead_collection_left_are_finished_by_recover() {
    let backends = Backends::new().await;
    for url in &backends.urls {
        let f = fixture(url).await;
        let d = f.push_blob("app", b"stuck").await;
        tick().await;
        // A collection took the row and died before deleting the object.
        assert!(
            f.catalog
                .gc_mark_blob_deleting(d.as_str(), now_ms())
                .await
                .unwrap()
        );
        assert_eq!(
            f.catalog.claim_blob(d.as_str(), 5).await.unwrap(),
            Claim::Deleting
        );
        // While another collection runs, recover leaves it to that one.
        assert!(
            f.catalog
                .take_lease("gc", "other", now_ms() + 60_000)
                .await
                .unwrap()
        );
        assert_eq!(recover(&f.catalog, &f.store).await.unwrap(), 0);
        f.catalog.release_lease("gc", "other").await.unwrap();
        assert_eq!(recover(&f.catalog, &f.store).await.unwrap(), 1);
        assert!(!f.has_object(b"stuck").await);
        assert!(matches!(
            f.catalog.claim_blob(d.as_str(), 5).await.unwrap(),
            Claim::Claimed(_)
        ));
        assert_eq!(recover(&f.catalog, &f.store).await.unwrap(), 0);
    }
    backends.drop_all().await;
}
